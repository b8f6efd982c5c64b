"""``cpt-launch tokenize``: JSONL -> Megatron .bin/.idx (wired into launcher/cli.py as a subcommand).

    cpt-launch tokenize --input 'data/ja_wiki/train_*.jsonl.gz' --tokenizer models/Llama-3.1-8B \\
        --output ds/train [--workers N] [--json-key text ...] [--strict] [--allow-eot-eod]
    python -m launcher.data.cli --input ... (the same, standalone)

stdout: one JSON object with the outputs and numbers; stderr: progress, summary, skipped lines.
Exit codes: 0 ok, 2 bad input or usage, 1 a worker process died, 130 interrupted (for 1 and 130 the
finished shards are kept: re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence

from launcher.data.blend import BlendError, write_blend
from launcher.data.tokenize import (
    ENGINES,
    DataError,
    TokenizeResult,
    WorkerCrash,
    tokenize_jsonl,
)

EXIT_OK = 0
EXIT_FAILED = 1  # a worker process died (e.g. out of memory): re-run to resume
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tokenize options (shared by ``cpt-launch tokenize`` and ``python -m launcher.data.cli``)."""
    parser.add_argument("--input", "-i", action="append", required=True, metavar="PATH",
                        help="a .jsonl/.jsonl.gz file, a glob (quote it) or a directory; repeat for more. "
                             "Document order = input order (globs and directories sorted)")
    parser.add_argument("--tokenizer", "-t", required=True, metavar="DIR",
                        help="HF tokenizer directory (tokenizer.json + tokenizer_config.json), e.g. the base model dir")
    parser.add_argument("--output", "-o", required=True, metavar="PREFIX",
                        help="output prefix: writes PREFIX_{key}_document.bin/.idx/.stats.json")
    parser.add_argument("--workers", "-j", type=int, default=_default_workers(),
                        help="worker processes (default: the CPUs this process may use)")
    parser.add_argument("--json-key", "--json-keys", dest="json_keys", action="extend", nargs="+", metavar="KEY",
                        help="JSON field(s) to tokenize (default: text); several give one output per key: "
                             "--json-key text title (or the flag repeated)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad line with exit 2 (default: skip it and report file:line)")
    parser.add_argument("--allow-eot-eod", action="store_true",
                        help="accept a tokenizer whose eos is <|eot_id|> (the Instruct config) as end-of-document")
    parser.add_argument("--keep-empty", action="store_true",
                        help="keep empty texts as [BOS, EOD] like Megatron (default: skip and report them)")
    parser.add_argument("--engine", choices=("auto",) + ENGINES, default="auto",
                        help="tokenizer engine (default auto: the fastest installed one that matches HF ids)")
    parser.add_argument("--blend", metavar="FILE",
                        help="add this dataset with --weight to a blend file: the [weight, prefix, ...] list "
                             "the training recipe reads as data_prefix")
    parser.add_argument("--weight", type=float, default=1.0, help="this dataset's weight in --blend (default 1.0)")
    parser.add_argument("--global-batch-size", type=int, default=1024,
                        help="for the token budget in stats.json (default 1024)")
    parser.add_argument("--seq-length", type=int, default=8192, help="for the token budget in stats.json (default 8192)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _summary(res: TokenizeResult) -> str:
    lines = []
    for key, prefix in res.outputs.items():
        st = res.stats[key]
        dist = st.get("tokens_per_document", {})
        lines.append(
            f"tokenize: {prefix}: {st['documents']:,} documents, {st['tokens']:,} tokens, "
            f"{st['text_bytes'] / 1e6:,.2f} MB text ({st.get('bytes_per_token')} B/token); tokens/doc "
            f"p50 {dist.get('p50')} p90 {dist.get('p90')} max {dist.get('max')}"
        )
        tb = st["token_budget"]
        lines.append(
            f"tokenize: budget: {tb['supported_steps']:,} steps of GBS {tb['global_batch_size']} x seq "
            f"{tb['seq_length']} ({tb['tokens_per_step']:,} tokens/step), one epoch"
        )
    if res.skipped:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(res.skipped_by_reason.items()))
        first = next(iter(res.stats.values()))["skipped"]
        lines.append(f"tokenize: skipped {res.skipped:,} lines ({reasons}); all listed in {first['all_in']}")
        for ex in first["examples"][:10]:
            lines.append(f"  {ex['file']}:{ex['line']}: {ex['reason']}: {ex['detail']}")
    rate = res.text_bytes / 1e6 / res.elapsed_s if res.elapsed_s > 0 else 0.0
    lines.append(
        f"tokenize: engine {res.engine}, {res.shards_total} shard(s) ({res.shards_reused} reused), "
        f"{res.elapsed_s:.1f} s, {rate:.2f} MB/s" + (" (up to date, nothing redone)" if res.up_to_date else "")
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``tokenize`` with parsed arguments; print JSON on stdout, progress and summary on stderr."""
    keys = args.json_keys or ["text"]
    if args.blend and len(keys) != 1:
        print(f"cpt-launch tokenize: --blend needs exactly one --json-key (got {keys}): one weight per dataset",
              file=sys.stderr)
        return EXIT_USAGE
    err = sys.stderr
    if args.blend and not (math.isfinite(args.weight) and args.weight > 0):
        print(f"cpt-launch tokenize: error: --weight {args.weight}: must be a positive number (a share of the blend)",
              file=err)
        return EXIT_USAGE
    try:
        res = tokenize_jsonl(
            args.input, args.tokenizer, args.output, workers=args.workers, json_keys=keys, strict=args.strict,
            allow_eot_eod=args.allow_eot_eod, keep_empty=args.keep_empty, engine=args.engine,
            global_batch_size=args.global_batch_size, seq_length=args.seq_length,
            progress=None if args.quiet else err,
            command="cpt-launch tokenize " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        )
        blend = None
        if args.blend:
            blend = write_blend(args.blend, [(args.weight, res.outputs[keys[0]])])
    except (DataError, BlendError) as e:
        print(f"cpt-launch tokenize: error: {e}", file=err)
        return EXIT_USAGE
    except WorkerCrash as e:
        print(f"cpt-launch tokenize: error: {e}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ncpt-launch tokenize: interrupted; finished shards are kept, re-run the same command to resume",
              file=err)
        return EXIT_INTERRUPTED
    print(_summary(res), file=err)
    print(json.dumps({
        "outputs": res.outputs, "documents": res.documents, "tokens": res.tokens, "text_bytes": res.text_bytes,
        "skipped": res.skipped, "skipped_by_reason": res.skipped_by_reason, "engine": res.engine,
        "stats": {k: f"{p}.stats.json" for k, p in res.outputs.items()}, "blend": blend,
        "up_to_date": res.up_to_date,
    }))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.data.cli", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
