"""``cpt-launch evaluate``: perplexity, Japanese replies and optional harness tasks, CPT model beside base model.

stdout: with --json the result object, else a short table; stderr: progress. The object is also written to
--output (default ``$CPT_RUN_DIR/eval/evaluate.json`` inside a run's job), with the replies beside it as
``replies.jsonl``. Exit codes: 0 ok, 2 bad input (a path, a --data item, missing harness datasets).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from launcher.evaluate import SCHEMA_VERSION
from launcher.evaluate.data import DataItem, EvalInputError, parse_data_items
from launcher.evaluate.replies import DEFAULT_PROMPTS, PLAIN_FORMAT, Prompt, load_prompts

EXIT_OK, EXIT_USAGE = 0, 2
JAPANESE_RULE = "mainly Japanese = kana+kanji characters > Latin letters (launcher/evaluate/script.py)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluate options (``cpt-launch evaluate`` and ``python -m launcher.evaluate.cli``)."""
    p.add_argument("--model-dir", required=True, metavar="HF_DIR", help="the CPT model (HF format, e.g. export's)")
    p.add_argument("--base-model-dir", metavar="HF_DIR", help="the base model, measured beside it")
    p.add_argument("--data", action="append", default=[], metavar="NAME=GLOB|PREFIX",
                   help="held-out documents: JSONL files (field text) or a Megatron ..._text_document prefix; "
                        "repeatable, e.g. --data ja='val/ja_*.jsonl' --data en='val/en_*.jsonl'")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), metavar="FILE",
                   help="Japanese instructions, JSONL {id, prompt} (default: the 32 shipped with cpt-launch)")
    p.add_argument("--max-docs", type=int, default=200, help="documents per --data item (default 200)")
    p.add_argument("--max-length", type=int, default=2048,
                   help="tokens per perplexity window; longer documents are split (default 2048)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length cap (default 128, greedy)")
    p.add_argument("--batch-size", type=int, default=4, help="windows / prompts per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (cuda if there is a GPU), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="auto: bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--text-key", default="text", help="JSONL field of the documents (default text)")
    p.add_argument("--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks/groups, comma-separated "
                   "(e.g. japanese_leaderboard); their datasets must be in the HF cache (checked first)")
    p.add_argument("--lm-eval-include", action="append", default=[], metavar="DIR",
                   help="a directory of extra task YAMLs for --lm-eval")
    p.add_argument("--lm-eval-limit", type=int, help="at most this many examples per task")
    p.add_argument("--output", metavar="FILE",
                   help="write the JSON here (default $CPT_RUN_DIR/eval/evaluate.json when run as a stage)")
    p.add_argument("--json", action="store_true", help="print the JSON object on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def _check_counts(a: argparse.Namespace) -> None:
    for flag, v, lo in (("--max-docs", a.max_docs, 1), ("--max-length", a.max_length, 2),
                        ("--max-new-tokens", a.max_new_tokens, 1), ("--batch-size", a.batch_size, 1),
                        ("--lm-eval-limit", a.lm_eval_limit or 1, 1)):
        if v < lo:
            raise EvalInputError(f"{flag}={v}: must be >= {lo}")
    for flag, d in (("--model-dir", a.model_dir), ("--base-model-dir", a.base_model_dir)):
        if d is not None and not (Path(d) / "config.json").is_file():
            raise EvalInputError(f"{flag} {d}: no config.json there (an HF model directory, e.g. the export "
                                 "stage's <run>/export/<model>-cpt)")


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _dtype(choice: str, device: str) -> Any:
    import torch

    if choice == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, choice)


def load_model(path: str, device: str, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device).eval()
    return model, tok


def evaluate_model(path: str, label: str, items: list[DataItem], prompts: list[Prompt], a: argparse.Namespace,
                   device: str, dtype: Any, tasks: list[str]) -> dict[str, Any]:
    """Everything measured on one model: its entry under "models"."""
    from launcher.evaluate.data import documents
    from launcher.evaluate.ppl import perplexity
    from launcher.evaluate.replies import generate_replies, prompt_format
    from launcher.evaluate.script import japanese_share

    t0 = time.monotonic()
    print(f"[evaluate] {label}: loading {path} ({device}, {str(dtype).replace('torch.', '')})", file=sys.stderr)
    model, tok = load_model(path, device, dtype)
    entry: dict[str, Any] = {"path": os.path.abspath(path), "ppl": {}, "tokens": {}, "documents": {}, "nll_sum": {}}
    for it in items:
        docs = documents(it, tok, a.max_docs, a.text_key)
        r = perplexity(model, docs, max_length=a.max_length, batch_size=a.batch_size, device=device,
                       desc=f"{label} ppl {it.name}", quiet=a.quiet)
        entry["ppl"][it.name], entry["tokens"][it.name] = r.ppl, r.tokens
        entry["documents"][it.name], entry["nll_sum"][it.name] = r.documents, r.nll_sum
        print(f"[evaluate] {label}: ppl {it.name} = {r.ppl:.4f} over {r.tokens:,} tokens of {r.documents} "
              f"document(s)", file=sys.stderr)
    entry["prompt_format"] = prompt_format(tok)
    replies = generate_replies(model, tok, prompts, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                               device=device, desc=f"{label} replies", quiet=a.quiet)
    entry["replies"] = replies
    entry["japanese_reply_share"] = japanese_share([r["reply"] for r in replies])
    entry["lm_eval"] = {}
    if tasks:
        from launcher.evaluate.harness import run_tasks

        entry["lm_eval"] = run_tasks(model, tok, tasks, include=a.lm_eval_include, batch_size=a.batch_size,
                                     limit=a.lm_eval_limit, device=device)
    entry["seconds"] = round(time.monotonic() - t0, 1)
    del model
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the base model loads next into the same GPU
    return entry


def side_by_side(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The top-level comparison keys: ppl, japanese_reply_share and lm_eval as {what: {model: value}}."""
    ppl: dict[str, dict[str, float]] = {}
    lm: dict[str, dict[str, dict[str, float]]] = {}
    for label, m in models.items():
        for name, v in m["ppl"].items():
            ppl.setdefault(name, {})[label] = v
        for task, metrics in m["lm_eval"].items():
            for metric, v in metrics.items():
                lm.setdefault(task, {}).setdefault(metric, {})[label] = v
    share = {label: m["japanese_reply_share"] for label, m in models.items()}
    return {"ppl": ppl, "japanese_reply_share": share, "lm_eval": lm}


def _settings(a: argparse.Namespace, items: list[DataItem], prompts: list[Prompt], device: str, dtype: Any,
              tasks: list[str]) -> dict[str, Any]:
    return {
        "data": {it.name: it.spec for it in items},
        "data_kind": {it.name: "megatron_prefix" if it.is_prefix else "jsonl" for it in items},
        "max_docs": a.max_docs, "max_length": a.max_length, "max_new_tokens": a.max_new_tokens,
        "batch_size": a.batch_size, "device": device, "dtype": str(dtype).replace("torch.", ""),
        "greedy": True, "prompts": os.path.abspath(a.prompts), "prompt_count": len(prompts),
        "plain_prompt_format": PLAIN_FORMAT, "japanese_rule": JAPANESE_RULE,
        "lm_eval_tasks": tasks, "lm_eval_limit": a.lm_eval_limit, "lm_eval_include": list(a.lm_eval_include),
    }


def output_path(a: argparse.Namespace) -> Path | None:
    if a.output:
        return Path(a.output)
    run_dir = os.environ.get("CPT_RUN_DIR")  # every stage script exports it
    return Path(run_dir) / "eval" / "evaluate.json" if run_dir else None


def write_result(path: Path, result: dict[str, Any]) -> None:
    """evaluate.json and replies.jsonl beside it, each written to .partial then renamed (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"model": label, **r} for label, m in result["models"].items() for r in m["replies"]]
    for target, text in ((path.with_name("replies.jsonl"),
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                         (path, json.dumps(result, ensure_ascii=False, indent=1) + "\n")):
        tmp = target.with_name(target.name + ".partial")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


def _table(result: dict[str, Any]) -> str:
    labels = list(result["models"])
    lines = ["what".ljust(28) + "".join(lab.rjust(14) for lab in labels)]
    for name, by in result["ppl"].items():
        lines.append(f"ppl {name}".ljust(28) + "".join(f"{by[lab]:14.4f}" for lab in labels))
    share = result["japanese_reply_share"]
    lines.append("japanese reply share".ljust(28) + "".join(f"{share[lab]:14.3f}" for lab in labels))
    for task, metrics in result["lm_eval"].items():
        for metric, by in metrics.items():
            if "stderr" not in metric:
                lines.append(f"{task} {metric}"[:28].ljust(28) + "".join(f"{by.get(lab, float('nan')):14.4f}"
                                                                         for lab in labels))
    return "\n".join(lines) + "\n"


def run(a: argparse.Namespace) -> int:
    """The whole stage: check inputs (and harness datasets) first, then load and measure each model in turn."""
    try:
        _check_counts(a)
        items = parse_data_items(a.data)
        prompts = load_prompts(a.prompts)
    except EvalInputError as e:
        print(f"cpt-launch evaluate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    tasks: list[str] = []
    if a.lm_eval:
        from launcher.evaluate.harness import missing_datasets, task_names

        tasks = task_names(a.lm_eval)
        try:
            missing = missing_datasets(tasks, a.lm_eval_include)
        except ImportError as e:
            print(f"cpt-launch evaluate: error: --lm-eval needs lm-evaluation-harness ({e}); fix: pip install -e "
                  "'.[eval]'", file=sys.stderr)
            return EXIT_USAGE
        if missing:
            for task, why in missing.items():
                print(f"cpt-launch evaluate: error: --lm-eval {task}: {why}", file=sys.stderr)
            print("cpt-launch evaluate: fill the HF cache (HF_HOME) on a machine with network first, e.g. "
                  "python -c \"import lm_eval...\" or lm_eval --tasks ... --limit 1 there", file=sys.stderr)
            return EXIT_USAGE
    device = _device(a.device)
    dtype = _dtype(a.dtype, device)
    models = {"cpt": evaluate_model(a.model_dir, "cpt", items, prompts, a, device, dtype, tasks)}
    if a.base_model_dir:
        models["base"] = evaluate_model(a.base_model_dir, "base", items, prompts, a, device, dtype, tasks)
    result: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
                              "models": models, **side_by_side(models),
                              "settings": _settings(a, items, prompts, device, dtype, tasks)}
    out = output_path(a)
    if out is not None:
        write_result(out, result)
        print(f"[evaluate] wrote {out} and {out.with_name('replies.jsonl')}", file=sys.stderr)
    if a.json:
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        sys.stdout.write(_table(result))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.evaluate.cli", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
