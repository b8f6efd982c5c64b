"""JSONL -> Megatron ``.bin/.idx``, byte-identical to ``tools/preprocess_data.py --append-eod``, faster.

What Megatron's classic script writes with an HF tokenizer, per JSON line and key:
``tokenizer(text).input_ids`` (so BOS 128000 first for Llama-3) + ``eos_token_id`` of the tokenizer's
config, as one document; int32 for a 128256-token vocabulary; ``{prefix}_{key}_document.bin/.idx``.
We produce the same bytes, with three differences in *policy* (never in the bytes of a kept document):

* Lines Megatron crashes on (malformed JSON, a missing key, a non-string value, a non-UTF-8 byte, a lone
  surrogate such as ``"\\ud800"``, which transformers refuses with a TypeError) are skipped and reported with
  file and line; ``strict=True`` stops at the first one instead.
* An empty text (``""``) is skipped and reported by default. Megatron keeps it as ``[BOS, EOD]``;
  ``keep_empty=True`` does the same.
* A tokenizer whose eos is ``<|eot_id|>`` (the Instruct config) is refused unless ``allow_eot_eod``.

Speed: documents are parsed and tokenized in batches in worker processes. The engine is the fastest of
gigatoken, tiktoken and HF ``tokenizers`` that is installed *and* gives exactly the HF ids on a probe set
(special-token strings, CR/LF, mixed scripts) for this tokenizer; otherwise HF ``tokenizers`` itself.

Safety and resume: each input file is one shard, written under ``{output}.tokenize-work/`` with temporary
names and marked done only after fsync + rename; the merge concatenates shards (the same bytes as one pass)
and renames ``.bin`` then ``.idx``. A re-run redoes only shards without a matching done-marker.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import gzip
import hashlib
import json
import os
import shutil
import signal
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from launcher.data.indexed import (
    IndexedWriter,
    IndexFormatError,
    iter_lengths,
    optimal_dtype,
    read_index,
)

FORMAT_VERSION = 1  # bump when the shard bytes for the same input/options would change
BLOCK_BYTES = 1 << 20  # JSONL bytes per task sent to a worker
EOT_TOKEN = "<|eot_id|>"
LENGTH_CAP = 1 << 20  # tokens-per-document histogram: exact up to here, one overflow bucket above
MAX_EXAMPLES = 20  # skipped-line examples kept in stats.json (up to MAX_LISTED per shard go to {output}.skipped.jsonl)
MAX_LINE_BYTES = 1 << 30  # one JSONL line (one document); past it the file is not JSONL
MAX_LISTED = 10_000  # skipped lines listed in {output}.skipped.jsonl per shard; all are counted in stats.json
ENGINES = ("gigatoken", "tiktoken", "hf")


class DataError(Exception):
    """Bad input or usage (exit 2). The message names file, line, field, value and what is allowed."""


class WorkerCrash(RuntimeError):
    """A worker process died; finished shards are kept for a re-run (exit 1)."""


# ----------------------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class TokenizerSpec:
    """What the workers need to reproduce ``AutoTokenizer(text).input_ids + [eod]`` exactly."""

    directory: str
    tokenizer_json: str
    sha256: str
    vocab_size: int  # len(AutoTokenizer): base vocab + added tokens -> Megatron's optimal_dtype
    eod_id: int
    eod_token: str
    prefix_ids: tuple[int, ...]  # added by the post-processor before the text (BOS)
    suffix_ids: tuple[int, ...]  # ... and after it
    fast_ok: bool  # the tokenizer.json is a byte-level BPE the fast engines can reproduce
    special_tokens: tuple[tuple[str, int], ...]

    @property
    def dtype(self) -> type[np.number]:
        return optimal_dtype(self.vocab_size)


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_specials(post: Any, ids_of: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(prefix, suffix) ids of a TemplateProcessing ``single`` = [Special*, A, Special*]; None if unknown."""
    if post is None:
        return (), ()
    procs = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    prefix: list[int] = []
    suffix: list[int] = []
    templates = [p for p in procs if p.get("type") == "TemplateProcessing"]
    others = [p for p in procs if p.get("type") not in ("TemplateProcessing", "ByteLevel")]
    if others or len(templates) > 1:
        return None
    if not templates:
        return (), ()
    seen_a = False
    for piece in templates[0].get("single", []):
        if "Sequence" in piece:
            if piece["Sequence"].get("id") != "A" or seen_a:
                return None
            seen_a = True
        elif "SpecialToken" in piece:
            name = piece["SpecialToken"]["id"]
            ids = templates[0].get("special_tokens", {}).get(name, {}).get("ids")
            if not ids:
                return None
            (suffix if seen_a else prefix).extend(int(i) for i in ids)
        else:
            return None
    return (tuple(prefix), tuple(suffix)) if seen_a else None


def load_tokenizer_spec(directory: str | os.PathLike[str], *, allow_eot_eod: bool = False) -> TokenizerSpec:
    """Read an HF tokenizer directory; check it the way Megatron would use it; refuse an eot EOD."""
    d = Path(directory)
    tj = d / "tokenizer.json"
    cfg_path = d / "tokenizer_config.json"
    if not d.is_dir():
        raise DataError(f"--tokenizer {directory}: not a directory (expected an HF tokenizer/model directory)")
    if not tj.is_file():
        raise DataError(
            f"--tokenizer {directory}: no tokenizer.json; only HF *fast* tokenizers are supported "
            f"(Llama-3.1 ships one: models/Llama-3.1-8B/tokenizer.json)"
        )
    if not cfg_path.is_file():
        raise DataError(
            f"--tokenizer {directory}: no tokenizer_config.json, so the end-of-document token is unknown; "
            f"Megatron's --append-eod uses its eos_token (base Llama-3.1: \"<|end_of_text|>\")"
        )
    raw = tj.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{cfg_path}: cannot parse: {e}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_path}: a JSON {type(cfg).__name__}; allowed: an object with eos_token")
    facts = _cache_get(sha, "facts")
    if facts is None:
        facts = _tokenizer_facts(raw, tj)
        _cache_put(sha, "facts", facts)
    added: dict[str, int] = facts["added"]
    eos = _token_content(cfg.get("eos_token"))
    if eos is None:
        raise DataError(
            f"{cfg_path}: eos_token is missing; set it to the end-of-document token "
            f"(base Llama-3.1: \"<|end_of_text|>\", id 128001)"
        )
    eos_id = added.get(eos)
    if eos_id is None:  # a plain vocabulary token (rare): look it up in the full vocabulary
        eos_id = (json.loads(raw).get("model", {}).get("vocab") or {}).get(eos)
    if eos_id is None:
        raise DataError(f"{cfg_path}: eos_token={eos!r} is not in {tj}'s vocabulary or added tokens")
    if eos == EOT_TOKEN and not allow_eot_eod:
        raise DataError(
            f"{cfg_path}: eos_token=\"{EOT_TOKEN}\" (id {eos_id}) is the Instruct model's end-of-TURN token; "
            f"pretraining documents must end with \"<|end_of_text|>\" (id 128001, the BASE model's eos). "
            f"Use the base model's tokenizer (meta-llama/Llama-3.1-8B), or pass --allow-eot-eod if you really "
            f"want {EOT_TOKEN} between documents"
        )
    template = facts["template"]
    prefix, suffix = (tuple(template[0]), tuple(template[1])) if template is not None else ((), ())
    return TokenizerSpec(
        directory=str(d.resolve()),
        tokenizer_json=str(tj.resolve()),
        sha256=sha,
        vocab_size=int(facts["vocab_size"]),
        eod_id=int(eos_id),
        eod_token=eos,
        prefix_ids=prefix,
        suffix_ids=suffix,
        fast_ok=bool(facts["fast_ok"]),
        special_tokens=tuple(sorted(added.items(), key=lambda kv: kv[1])),
    )


def _tokenizer_facts(raw: bytes, tj: Path) -> dict[str, Any]:
    """What we need from a tokenizer.json (parsing 9 MB takes ~0.5 s, so the result is cached by sha256)."""
    try:
        tok = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{tj}: cannot parse: {e}") from None
    if not isinstance(tok, dict) or not isinstance(tok.get("model") or {}, dict):
        raise DataError(f"{tj}: not an HF tokenizer.json (a JSON {type(tok).__name__} without a 'model' object)")
    ids_of: dict[str, int] = {}
    model = tok.get("model") or {}
    vocab = model.get("vocab") or {}
    if isinstance(vocab, dict):
        ids_of.update(vocab)
    added = {t["content"]: int(t["id"]) for t in tok.get("added_tokens", [])}
    ids_of.update(added)
    template = _template_specials(tok.get("post_processor"), ids_of)
    pre = tok.get("pre_tokenizer") or {}
    pre_types = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre.get("type")]
    fast_ok = (
        template is not None
        and model.get("type") == "BPE"
        and tok.get("normalizer") is None
        and "ByteLevel" in pre_types
        and set(pre_types) <= {"Split", "ByteLevel"}
        and not model.get("byte_fallback")
        and model.get("continuing_subword_prefix") in (None, "")
        and model.get("end_of_word_suffix") in (None, "")
    )
    return {
        # transformers' len(tokenizer) = tokenizers' get_vocab_size(with_added_tokens=True): distinct ids
        "vocab_size": len(set(ids_of.values())),
        "added": added,
        "template": [list(template[0]), list(template[1])] if template is not None else None,
        "fast_ok": fast_ok,
    }


def _cache_file(sha: str) -> Path:
    root = os.environ.get("CPT_LAUNCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cpt-launch")
    return Path(root) / "tokenizers" / f"{sha}.json"


def _cache_get(sha: str, key: str) -> Any:
    """A cached fact about the tokenizer.json with this sha256 (None when absent or unreadable)."""
    try:
        return json.loads(_cache_file(sha).read_text()).get(key)
    except (OSError, ValueError):
        return None


def _cache_put(sha: str, key: str, value: Any) -> None:
    """Best effort (a read-only home must not stop tokenization)."""
    path = _cache_file(sha)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


class _HFEngine:
    """HF ``tokenizers`` (what transformers' fast tokenizer calls): the reference, slowest."""

    name = "hf"

    def __init__(self, spec: TokenizerSpec) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(spec.tokenizer_json)
        self.adds_template = True  # add_special_tokens=True: the post-processor adds BOS itself

    def encode(self, texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        strs = [t.decode("utf-8") for t in texts]
        encs = self._tok.encode_batch_fast(strs) if hasattr(self._tok, "encode_batch_fast") else self._tok.encode_batch(strs)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        flat = np.fromiter((i for e in encs for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths


class _TiktokenEngine:
    """tiktoken over the same byte-level vocabulary (ranks = ids, Meta's regex, specials split like HF)."""

    name = "tiktoken"

    def __init__(self, spec: TokenizerSpec) -> None:
        import tiktoken

        tok = json.loads(Path(spec.tokenizer_json).read_bytes())
        model = tok["model"]
        if not model.get("ignore_merges"):
            raise RuntimeError("tiktoken needs ignore_merges=true (whole pre-tokens looked up first)")
        pattern = None
        for p in tok["pre_tokenizer"].get("pretokenizers", []):
            if p.get("type") == "Split":
                pattern = p["pattern"].get("Regex")
        if pattern is None:
            raise RuntimeError("no Split regex in the pre-tokenizer")
        u2b = {c: b for b, c in _bytes_to_unicode().items()}
        ranks = {bytes(u2b[ch] for ch in t): i for t, i in model["vocab"].items()}
        self._enc = tiktoken.Encoding(
            "cpt", pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
        )
        self.adds_template = False

    def encode(self, texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        out = [self._enc.encode(t.decode("utf-8"), allowed_special="all", disallowed_special=()) for t in texts]
        lengths = np.fromiter((len(x) for x in out), dtype=np.int64, count=len(out))
        flat = np.fromiter((i for x in out for i in x), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths


class _GigatokenEngine:
    """gigatoken (Rust, caching BPE; what Megatron-LM's preprocess_data_fast.py uses), one thread per worker."""

    name = "gigatoken"

    def __init__(self, spec: TokenizerSpec) -> None:
        import gigatoken

        self._tok = gigatoken.Tokenizer(spec.directory)
        self.adds_template = False

    def warm_up(self) -> None:
        """The first encode builds tables lazily (~0.4 s); done once in the parent before forking workers.

        It also starts jemalloc's background thread, which is fork-safe (jemalloc's own atfork handlers);
        no rayon pool is started with parallel=False.
        """
        self._tok.encode_batch([b"warm up \xe6\x97\xa5\xe6\x9c\xac"], parallel=False)

    def encode(self, texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        arr = self._tok.encode_batch(texts, parallel=False)
        layout = arr.layout
        offsets = np.asarray(layout.offsets.data)
        flat = np.asarray(layout.content.data)[offsets[0]:offsets[-1]]
        return flat, np.diff(offsets)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


PROBES = [
    "This is a test sentence.", "Hello world!", "", " ", "  \n\n\t x", "a\r\nb\rc\n", "日本語のテキスト。\n\n次の段落",
    "a<|end_of_text|>b", "x <|eot_id|> y<|begin_of_text|>", "<|reserved_special_token_5|>", "<|end_of_text", "<|END_OF_TEXT|>",
    "I'M HERE, you're THERE'S 'll 'Ve", "12345678 ３４５ ٣٤ Ⅻ ½", "ſ K İ ß ẞ ﬁ Σς", "e\u0301 😀👍🏽 \u200b\ufeff\u3000\u00a0",
    "\u2028line\u2029sep\u0085", "tab\there  spaces   end  ", "ｱｲｳ 한국어 العربية עברית ไทย", "\x00\x01\x7f",
    "def f(x):\n    return x**2  # comment\n", "https://example.com/a?b=c&d=e", "!!!???...---***",
]


def _engine_candidates(spec: TokenizerSpec, engine: str) -> list[str]:
    if engine != "auto":
        return [engine]
    return ["gigatoken", "tiktoken", "hf"] if spec.fast_ok else ["hf"]


def _make_engine(name: str, spec: TokenizerSpec) -> Any:
    return {"gigatoken": _GigatokenEngine, "tiktoken": _TiktokenEngine, "hf": _HFEngine}[name](spec)


_PROBED_HERE = False  # an engine (or HF tokenizers) has encoded in this process: do not fork workers


def _engine_version(name: str) -> str | None:
    """The installed version of an engine's package, or None when it is not installed."""
    import importlib.metadata
    import importlib.util

    pkg = {"hf": "tokenizers"}.get(name, name)
    if importlib.util.find_spec(pkg) is None:
        return None
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def choose_engine(spec: TokenizerSpec, engine: str = "auto", log: TextIO | None = None) -> tuple[str, Any]:
    """The first engine that is installed and reproduces HF ``tokenizers`` on PROBES for this tokenizer.

    Returns (name, the engine object if one was built while checking, else None). The verdict is cached
    per (tokenizer.json sha256, engine, engine version, probe set), so later runs start at once.
    """
    if engine not in ("auto",) + ENGINES:
        raise DataError(f"--engine {engine!r}: allowed: auto, {', '.join(ENGINES)}")
    global _PROBED_HERE
    candidates = _engine_candidates(spec, engine)
    probe_hash = hashlib.sha256(json.dumps(PROBES).encode()).hexdigest()[:12]
    ref: list[list[int]] | None = None
    for name in candidates:
        if name == "hf":
            return name, None
        version = _engine_version(name)
        if version is None:
            if engine != "auto":
                raise DataError(f"--engine {name}: the Python package is not installed (pip install {name})")
            continue
        key = f"probe:{name}:{version}:{probe_hash}"
        verdict = _cache_get(spec.sha256, key)
        if verdict is True:
            return name, None
        if verdict is False and engine == "auto":
            continue
        try:
            eng = _make_engine(name, spec)
            _PROBED_HERE = True
            flat, lengths = eng.encode([p.encode("utf-8") for p in PROBES])
        except Exception as e:  # an engine that cannot load this tokenizer is simply not used
            if log:
                print(f"tokenize: engine {name} unusable for this tokenizer ({e}); trying the next", file=log)
            _cache_put(spec.sha256, key, False)
            continue
        if ref is None:
            from tokenizers import Tokenizer

            ref = [e.ids for e in Tokenizer.from_file(spec.tokenizer_json).encode_batch(PROBES)]
        got = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
        pre, suf = list(spec.prefix_ids), list(spec.suffix_ids)
        ok = all(pre + g.tolist() + suf == r for g, r in zip(got, ref))
        _cache_put(spec.sha256, key, ok)
        if ok:
            return name, eng
        if log:
            print(f"tokenize: engine {name} differs from HF tokenizers on the probe set; not used", file=log)
        if engine != "auto":
            raise DataError(f"--engine {name}: its ids differ from HF tokenizers for {spec.tokenizer_json}")
    return "hf", None


# ------------------------------------------------------------------------------------------ workers


@dataclass(frozen=True)
class _Options:
    json_keys: tuple[str, ...]
    keep_empty: bool
    append_eod: bool


@dataclass
class _BlockResult:
    tokens: dict[str, np.ndarray]  # per key, in the output dtype, documents concatenated
    lengths: dict[str, np.ndarray]  # per key, int32 tokens per document
    text_bytes: dict[str, int]
    lines: int
    issues: list[tuple[int, str, str]]  # (line number, reason, detail): at most MAX_LISTED
    issue_counts: dict[str, int] = dataclasses.field(default_factory=dict)  # every issue, by reason


_STATE: dict[str, Any] = {}


def _pool_initializer(spec: TokenizerSpec, engine: str, opts: _Options, forked: bool) -> None:
    """A worker process: one tokenizer thread (the processes are the parallelism), Ctrl-C to the parent.

    Forked workers inherit the engine the parent loaded (no second 0.5 s load of a 9 MB tokenizer.json);
    spawned ones (platforms without fork) load their own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if not forked or "engine" not in _STATE:
        _init_worker(spec, engine, opts)
        warm = getattr(_STATE["engine"], "warm_up", None)
        if warm is not None:
            warm()


def _init_worker(spec: TokenizerSpec, engine: str, opts: _Options, prebuilt: Any = None) -> None:
    _STATE["spec"] = spec
    _STATE["opts"] = opts
    _STATE["engine"] = prebuilt if prebuilt is not None else _make_engine(engine, spec)
    try:
        import orjson

        _STATE["loads"] = orjson.loads
    except ImportError:
        _STATE["loads"] = None


def _describe_json_error(line: str) -> str:
    try:
        json.loads(line)
    except json.JSONDecodeError as e:
        return f"{e.msg} at column {e.colno}"
    except Exception as e:  # pragma: no cover - only json's own errors are expected
        return str(e)
    return "not valid JSON"


def _parse_line(line: bytes, keys: tuple[str, ...], keep_empty: bool) -> tuple[list[bytes] | None, str, str]:
    """UTF-8 texts for each key, or (None, reason, detail). The values of Megatron's json.loads(line)[key]."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, "non-utf8", f"byte 0x{line[e.start]:02x} at byte {e.start} is not UTF-8; allowed: UTF-8 text"
    obj: Any = None
    fast = _STATE.get("loads")
    try:
        obj = fast(line) if fast is not None else json.loads(decoded)
    except Exception:
        # orjson is stricter than json (NaN, huge ints, lone surrogates): json.loads on the decoded str
        # decides, exactly as Megatron's json.loads(line) on a line read in text mode.
        try:
            obj = json.loads(decoded)
        except (ValueError, RecursionError):
            return None, "malformed-json", _describe_json_error(decoded)
    if not isinstance(obj, dict):
        return None, "not-an-object", f"a JSON {type(obj).__name__} ; allowed: an object like {{\"text\": \"...\"}}"
    texts = []
    for key in keys:
        if key not in obj:
            shown = ", ".join(sorted(map(str, obj))[:8]) or "none"
            return None, "missing-key", f"field {key!r} missing (fields: {shown}); allowed: --json-key naming a string field"
        value = obj[key]
        if not isinstance(value, str):
            return None, "not-a-string", f"field {key!r} is {type(value).__name__} {str(value)[:40]!r}; allowed: a string"
        if value == "" and not keep_empty:
            return None, "empty", f"field {key!r} is an empty string (Megatron would write [BOS, EOD]; --keep-empty does)"
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError as e:
            return None, "lone-surrogate", (
                f"field {key!r} has a lone surrogate U+{ord(value[e.start]):04X} at character {e.start} "
                f"(transformers refuses it: TypeError); allowed: valid Unicode"
            )
        texts.append(encoded)
    return texts, "", ""


def _assemble(flat: np.ndarray, lengths: np.ndarray, pre: list[int], suf: list[int], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Insert prefix/suffix ids (BOS, EOD) around each document's ids, vectorised."""
    n_docs = len(lengths)
    k_pre, k_suf = len(pre), len(suf)
    out_len = lengths + (k_pre + k_suf)
    starts = np.zeros(n_docs, dtype=np.int64)
    if n_docs:
        np.cumsum(out_len[:-1], out=starts[1:])
    out = np.empty(int(out_len.sum()), dtype=dtype)
    if len(flat):
        doc_of = np.repeat(np.arange(n_docs), lengths)
        in_starts = np.zeros(n_docs, dtype=np.int64)
        np.cumsum(lengths[:-1], out=in_starts[1:])
        out[np.arange(len(flat)) + (starts - in_starts + k_pre)[doc_of]] = flat
    for j, tid in enumerate(pre):
        out[starts + j] = tid
    ends = starts + out_len
    for j, tid in enumerate(suf):
        out[ends - k_suf + j] = tid
    return out, out_len.astype(np.int32)


ENGINE_RENEW_BLOCKS = 512  # gigatoken's pre-token cache only grows: start a fresh one every ~512 MB


def _process_block(block: bytes, first_line: int) -> _BlockResult:
    spec: TokenizerSpec = _STATE["spec"]
    opts: _Options = _STATE["opts"]
    _STATE["blocks"] = _STATE.get("blocks", 0) + 1
    if _STATE["blocks"] % ENGINE_RENEW_BLOCKS == 0 and _STATE["engine"].name == "gigatoken":
        _STATE["engine"] = _make_engine("gigatoken", spec)  # bounded memory whatever the input size
    engine = _STATE["engine"]
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    per_key: list[list[bytes]] = [[] for _ in opts.json_keys]
    issues: list[tuple[int, str, str]] = []
    counts: collections.Counter[str] = collections.Counter()
    for i, line in enumerate(lines):
        if not line.strip():
            counts["blank-line"] += 1
            if len(issues) < MAX_LISTED:  # a file of blank lines is counted, not listed line by line
                issues.append((first_line + i, "blank-line", "an empty line; allowed: one JSON object per line"))
            continue
        texts, reason, detail = _parse_line(line, opts.json_keys, opts.keep_empty)
        if texts is None:
            counts[reason] += 1
            if len(issues) < MAX_LISTED:
                issues.append((first_line + i, reason, detail))
            continue
        for k, t in enumerate(texts):
            per_key[k].append(t)
    dtype = np.dtype(spec.dtype)
    result = _BlockResult({}, {}, {}, len(lines), issues, dict(counts))
    for key, texts in zip(opts.json_keys, per_key):
        flat, lengths = engine.encode(texts)
        pre = [] if engine.adds_template else list(spec.prefix_ids)
        suf = ([] if engine.adds_template else list(spec.suffix_ids))
        if opts.append_eod:
            suf = suf + [spec.eod_id]
        tokens, doc_lengths = _assemble(flat, lengths, pre, suf, dtype)
        result.tokens[key] = tokens
        result.lengths[key] = doc_lengths
        result.text_bytes[key] = sum(map(len, texts))
    return result


# ------------------------------------------------------------------------------------------- inputs


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, globs (sorted) and directories (``*.jsonl``/``*.jsonl.gz`` below them, sorted), in order."""
    out: list[Path] = []
    seen: set[Path] = set()
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                p for p in Path(spec).rglob("*") if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz"))
            )
            if not found:
                raise DataError(f"--input {spec}: directory has no *.jsonl or *.jsonl.gz file")
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise DataError(f"--input {spec!r}: the pattern matches no file")
        elif os.path.isfile(spec):
            found = [Path(spec)]
        else:
            raise DataError(f"--input {spec}: no such file, directory or glob match")
        for p in found:
            rp = p.resolve()
            if rp not in seen:
                seen.add(rp)
                out.append(p)
    for p in out:
        if not (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz") or p.name.endswith(".json")):
            raise DataError(f"--input {p}: unsupported file type; allowed: .jsonl, .jsonl.gz (.json is read as JSONL)")
    return out


# the longest name tokenize writes beside --output: PREFIX_{key}_document.stats.json / .tokenize-work
_LONGEST_SUFFIX = len("_document.stats.json") + 8


def _check_output_place(out: Path, outputs: dict[str, str], files: list[Path]) -> None:
    """--output names a place that can hold the files and is none of the inputs: refused before any work, so a
    bad output never leaves half a dataset, and a run never reads (then replaces) one of its own files."""
    longest = max(len(os.fsencode(Path(p).name)) for p in outputs.values()) + _LONGEST_SUFFIX
    if longest > 255 or any(len(os.fsencode(part)) > 255 for part in out.parts):
        raise DataError(f"--output {out}: the file names it makes would be {longest} bytes long; allowed: 255 "
                        "(shorten the prefix)")
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("/"))
    if not parent.is_dir():
        raise DataError(f"--output {out}: {parent} is a file, not a directory")
    own = {Path(f"{out}.skipped.jsonl").resolve(), *(Path(f"{p}.stats.json").resolve() for p in outputs.values())}
    work = Path(f"{out}.tokenize-work").resolve()
    mine = [f for f in files if f.resolve() in own or work in f.resolve().parents]
    if mine:
        raise DataError(f"--input {mine[0]}: is one of the files --output {out} writes (its stats, skipped-lines "
                        "list or work files), which this run would replace; allowed: any other file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {out}: cannot create {out.parent}: {e.strerror}") from None


def _open_input(path: Path) -> tuple[Any, Any]:
    raw = open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _iter_blocks(path: Path, block_bytes: int) -> Iterator[tuple[bytes, int, int]]:
    """(block of whole lines, first line number (1-based), raw file position) -- bounded memory."""
    stream, raw = _open_input(path)
    line_no = 1
    carry = b""
    try:
        while True:
            try:
                chunk = stream.read(block_bytes)
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}: cannot read past line {line_no}: {e} (a truncated or corrupt .gz?)") from None
            if not chunk:
                if carry:
                    yield carry + b"\n", line_no, raw.tell()
                return
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data  # a line longer than a block: keep reading, up to a bound
                if len(carry) > MAX_LINE_BYTES:
                    raise DataError(f"{path}:{line_no}: a line of over {MAX_LINE_BYTES >> 20} MiB without a newline; "
                                    "allowed: one JSON document per line")
                continue
            block, carry = data[: cut + 1], data[cut + 1:]
            yield block, line_no, raw.tell()
            line_no += block.count(b"\n")
    finally:
        stream.close()
        raw.close()


def _stop_pool(pool: Any) -> None:
    """Stop the workers, whatever state an interrupt left them in, without hanging.

    The call queue's feeder thread may be blocked writing a block into the pipe (this process holds its read end
    too, so a full pipe blocks rather than fails); shutdown() would then join that thread forever once the workers
    are gone (Ctrl-C during `tokenize -j 2` hung > 60 s that way). Its pending data is worthless here: the shards
    that finished are on disk, the rest is redone on a re-run."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:
        queue.cancel_join_thread()
        _drain(queue)
    pool.shutdown(wait=True, cancel_futures=True)


def _drain(queue: Any, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
    """Read what the dead workers never took out of the call queue's pipe, so that a feeder thread blocked on a
    full pipe finishes its write: the pool's own manager thread joins that feeder when the pool breaks (a killed
    worker), and would wait forever. Stops once the pipe stays empty for ``quiet_s``."""
    reader = getattr(queue, "_reader", None)
    if reader is None:
        return
    end = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    while time.monotonic() < end and time.monotonic() - quiet_since < quiet_s:
        try:
            if reader.poll(0.05):
                reader.recv_bytes()
                quiet_since = time.monotonic()
        except (OSError, EOFError):
            return


# ------------------------------------------------------------------------------------------ results


def supported_steps(tokens: int, gbs: int, seq: int) -> int:
    """Optimizer steps one epoch of ``tokens`` supports at global batch ``gbs`` and sequence length ``seq``.

    Megatron's GPTDataset cuts the concatenated token stream into samples of ``seq`` + 1 tokens that
    overlap by one, so one epoch has ``(tokens - 1) // seq`` samples and ``samples // gbs`` full steps.
    """
    if gbs <= 0 or seq <= 0:
        raise ValueError(f"gbs={gbs}, seq={seq}: both must be positive")
    if tokens <= 1:
        return 0
    return ((tokens - 1) // seq) // gbs


@dataclass
class Issue:
    file: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.detail}"


@dataclass
class TokenizeResult:
    """What ``tokenize_jsonl`` produced: one dataset prefix per JSON key, and the run's numbers."""

    outputs: dict[str, str]  # key -> dataset prefix ("{output}_{key}_document")
    stats: dict[str, dict[str, Any]]  # key -> the content of {prefix}.stats.json
    documents: int
    tokens: int  # over all keys
    text_bytes: int
    skipped: int
    skipped_by_reason: dict[str, int]
    shards_total: int
    shards_reused: int
    engine: str
    elapsed_s: float
    up_to_date: bool = False


def read_stats(prefix: str | os.PathLike[str]) -> dict[str, Any]:
    """Numbers of a prepared dataset prefix (``…_text_document``), cheaply: the .idx header + stats.json.

    Always: documents, tokens, dtype, bin_bytes (from the .idx, O(1)); plus everything in
    ``{prefix}.stats.json`` when that file exists (written by ``cpt-launch tokenize``).
    """
    prefix = str(prefix)
    for suffix in (".bin", ".idx"):
        prefix = prefix.removesuffix(suffix)
    try:
        info = read_index(prefix)
    except IndexFormatError as e:
        raise DataError(str(e)) from None
    stats: dict[str, Any] = {}
    sp = Path(f"{prefix}.stats.json")
    if sp.is_file():
        try:
            stats = json.loads(sp.read_text(encoding="utf-8"))
        except ValueError:
            stats = {}
    stats.update(
        dataset_prefix=prefix, documents=info.documents, sequences=info.sequences, tokens=info.tokens,
        dtype=str(info.dtype), bin_bytes=info.tokens * info.dtype.itemsize,
    )
    return stats


def count_tokens(prefix: str | os.PathLike[str]) -> int:
    """Total tokens of a prepared dataset prefix, from its .idx in O(1) (checks the .bin size too)."""
    return int(read_stats(prefix)["tokens"])


def length_distribution(prefix: str) -> dict[str, Any]:
    """Tokens-per-document distribution, streamed from the .idx (exact up to LENGTH_CAP tokens)."""
    info = read_index(prefix)
    counts = np.zeros(LENGTH_CAP + 1, dtype=np.int64)
    lo, hi, total = None, 0, 0
    for chunk in iter_lengths(info):
        if len(chunk) == 0:
            continue
        counts += np.bincount(np.minimum(chunk, LENGTH_CAP), minlength=LENGTH_CAP + 1)
        lo = int(chunk.min()) if lo is None else min(lo, int(chunk.min()))
        hi = max(hi, int(chunk.max()))
        total += int(chunk.sum(dtype=np.int64))
    n = info.sequences
    if n == 0:
        return {"documents": 0}
    cdf = np.cumsum(counts)

    def pct(p: float) -> int:
        v = int(np.searchsorted(cdf, max(1, int(np.ceil(p / 100 * n)))))
        return hi if v >= LENGTH_CAP else v

    edges = [0] + [2 ** i for i in range(25)]
    hist = {}
    for a, b in zip(edges[:-1], edges[1:]):
        c = int(counts[a:min(b, LENGTH_CAP)].sum()) if a < LENGTH_CAP else 0
        if c:
            hist[f"[{a},{b})"] = c
    if counts[LENGTH_CAP]:
        hist[f">={LENGTH_CAP}"] = int(counts[LENGTH_CAP])
    return {
        "min": lo, "p1": pct(1), "p10": pct(10), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": hi,
        "mean": round(total / n, 2), "histogram": hist,
    }


# --------------------------------------------------------------------------------------------- run


class _Progress:
    """Bytes read, docs/s and MB/s of text on stderr (``launcher.bars``: a tqdm bar on a terminal, a line every
    10 s otherwise)."""

    def __init__(self, stream: TextIO | None, total_bytes: int) -> None:
        from launcher.bars import Bar

        self.bar = Bar("tokenize", max(total_bytes, 1), stream)
        self.t0 = time.monotonic()
        self.docs = 0
        self.text_bytes = 0

    def update(self, docs: int, text_bytes: int, pos: int, force: bool = False) -> None:
        self.docs += docs
        self.text_bytes += text_bytes
        el = max(time.monotonic() - self.t0, 1e-9)
        self.bar.update_to(pos, f"{self.docs:,} docs, {self.docs / el:,.0f} docs/s, "
                                f"{self.text_bytes / el / 1e6:.2f} MB/s text")

    def close(self) -> None:
        self.bar.close()


def _fingerprint(path: Path, spec: TokenizerSpec, opts: _Options) -> dict[str, Any]:
    st = path.stat()
    return {
        "format": FORMAT_VERSION, "input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "tokenizer_sha256": spec.sha256, "eod_id": spec.eod_id, "prefix_ids": list(spec.prefix_ids),
        "suffix_ids": list(spec.suffix_ids), "dtype": np.dtype(spec.dtype).name, "json_keys": list(opts.json_keys),
        "keep_empty": opts.keep_empty, "append_eod": opts.append_eod,
    }


def _dataset_prefix(output: str, key: str) -> str:
    return f"{output}_{key}_document"


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tokenize_jsonl(
    inputs: Sequence[str],
    tokenizer_dir: str,
    output_prefix: str,
    *,
    workers: int,
    json_keys: Sequence[str] = ("text",),
    strict: bool = False,
    allow_eot_eod: bool = False,
    keep_empty: bool = False,
    engine: str = "auto",
    global_batch_size: int = 1024,
    seq_length: int = 8192,
    progress: TextIO | None = None,
    block_bytes: int = BLOCK_BYTES,
    command: str | None = None,
) -> TokenizeResult:
    """Tokenize JSONL inputs into ``{output_prefix}_{key}_document.bin/.idx`` (+ ``.stats.json``).

    Raises DataError (exit 2) for bad usage and, with ``strict``, at the first bad line (file:line).
    KeyboardInterrupt propagates after the workers are stopped; finished shards are kept for a re-run.
    """
    t_start = time.monotonic()
    if workers < 1:
        raise DataError(f"--workers {workers}: must be >= 1")
    for flag, val in (("--global-batch-size", global_batch_size), ("--seq-length", seq_length)):
        if val < 1:
            raise DataError(f"{flag} {val}: must be >= 1 (it sizes the token budget in stats.json)")
    keys = tuple(json_keys)
    if not keys or len(set(keys)) != len(keys):
        raise DataError(f"--json-key {list(keys)}: give one or more distinct keys")
    files = expand_inputs(inputs)
    spec = load_tokenizer_spec(tokenizer_dir, allow_eot_eod=allow_eot_eod)
    if keep_empty and not spec.prefix_ids and not spec.suffix_ids:
        raise DataError("--keep-empty: this tokenizer adds no BOS, so an empty document would have no tokens")
    opts = _Options(json_keys=keys, keep_empty=keep_empty, append_eod=True)
    out = Path(output_prefix)
    if out.name == "" or str(output_prefix).endswith(os.sep):
        raise DataError(f"--output {output_prefix}: give a file prefix such as ds/train, not a directory")
    outputs = {k: _dataset_prefix(str(out), k) for k in keys}
    _check_output_place(out, outputs, files)
    if out.is_dir():
        raise DataError(f"--output {output_prefix}: is a directory; give a file prefix such as {out / 'train'}")
    work = Path(f"{out}.tokenize-work")
    with _exclusive(Path(f"{out}.tokenize.lock"), output_prefix):
        return _tokenize_locked(files, spec, keys, opts, out, outputs, work, workers=workers, strict=strict,
                                engine=engine, global_batch_size=global_batch_size, seq_length=seq_length,
                                progress=progress, block_bytes=block_bytes, command=command, t_start=t_start)


@contextlib.contextmanager
def _exclusive(lock_path: Path, output_prefix: str) -> Iterator[None]:
    """One tokenize run per output prefix at a time (two would interleave shards and merges)."""
    import fcntl

    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"--output {output_prefix}: another tokenize run is writing it ({lock_path} is locked)") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock_path.unlink(missing_ok=True)


def _tokenize_locked(files: list[Path], spec: TokenizerSpec, keys: tuple[str, ...], opts: _Options, out: Path,
                     outputs: dict[str, str], work: Path, *, workers: int, strict: bool, engine: str,
                     global_batch_size: int, seq_length: int, progress: TextIO | None, block_bytes: int,
                     command: str | None, t_start: float) -> TokenizeResult:
    fingerprints = [_fingerprint(p, spec, opts) for p in files]

    # Already complete? (same inputs, tokenizer and options as the stats.json of every output)
    if all(Path(f"{outputs[k]}.idx").is_file() and Path(f"{outputs[k]}.stats.json").is_file() for k in keys) and not work.exists():
        try:
            old = [json.loads(Path(f"{outputs[k]}.stats.json").read_text()) for k in keys]
            if all(o.get("fingerprints") == fingerprints for o in old):
                for k in keys:
                    read_index(outputs[k])  # a present and consistent pair
                if progress:
                    print(f"tokenize: {', '.join(outputs.values())} up to date (same inputs, tokenizer, options)", file=progress)
                return _result_from_stats(outputs, old, t_start, len(files), up_to_date=True)
        except (ValueError, IndexFormatError, OSError):
            pass

    engine_name, engine_obj = choose_engine(spec, engine, log=progress)
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("*.tmp"):
        stale.unlink()
    shard_prefix = [work / f"{i:05d}" for i in range(len(files))]

    def marker(i: int) -> Path:
        return Path(f"{shard_prefix[i]}.done.json")

    pending: list[int] = []
    for i in range(len(files)):
        m = marker(i)
        ok = False
        if m.is_file():
            try:
                meta = json.loads(m.read_text())
                ok = meta.get("fingerprint") == fingerprints[i] and all(
                    read_index(f"{shard_prefix[i]}_{k}_document") is not None for k in keys
                )
            except (ValueError, IndexFormatError, OSError):
                ok = False
        if not ok:
            m.unlink(missing_ok=True)
            pending.append(i)
    reused = len(files) - len(pending)
    if progress and reused:
        print(f"tokenize: resuming: {reused} of {len(files)} shards already done in {work}", file=progress)

    prog = _Progress(progress, sum(files[i].stat().st_size for i in pending))
    pool = None
    try:
        if pending:
            # The engine is loaded and warmed up here once and the workers are forked after it
            # (copy-on-write: no 0.5 s load + 0.4 s warm-up per worker). After a probe in this process
            # (HF tokenizers' rayon pool may be running) the workers are spawned and load their own.
            if workers > 1 and (engine_obj is not None or _PROBED_HERE):
                forked = False
            else:
                forked = True
                _init_worker_inline(spec, engine_name, opts, engine_obj)
                warm = getattr(_STATE["engine"], "warm_up", None)
                if warm is not None and workers > 1:
                    warm()
            if workers > 1:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                forked = forked and "fork" in mp.get_all_start_methods()
                ctx = mp.get_context("fork" if forked else "spawn")
                # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the OOM killer makes
                # Pool wait forever; here it raises BrokenProcessPool.
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_initializer,
                                           initargs=(spec, engine_name, opts, forked))
            _run_shards(files, pending, shard_prefix, fingerprints, spec, opts, strict, pool, workers, prog, block_bytes)
    except BrokenProcessPool:
        raise WorkerCrash(
            "a tokenizer worker process died (killed by the OOM killer or a signal?); finished shards are kept "
            f"in {work}: re-run the same command to resume"
        ) from None
    finally:
        if pool is not None:
            _stop_pool(pool)
        prog.close()

    # Merge shards -> final outputs (same bytes as one pass), .bin then .idx, then stats.json.
    metas = [json.loads(marker(i).read_text()) for i in range(len(files))]
    for k in keys:
        if len(files) == 1:  # one shard: it already is the output (fsynced); move it, .idx last
            shard = f"{shard_prefix[0]}_{k}_document"
            Path(f"{outputs[k]}.idx").unlink(missing_ok=True)
            os.replace(f"{shard}.bin", f"{outputs[k]}.bin")
            os.replace(f"{shard}.idx", f"{outputs[k]}.idx")
            continue
        writer = IndexedWriter(outputs[k], spec.dtype)
        try:
            for i in range(len(files)):
                writer.append_dataset(f"{shard_prefix[i]}_{k}_document")
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
    elapsed = time.monotonic() - t_start
    issues_all = [Issue(**x) for m in metas for x in m["issues"]]
    by_reason = dict(collections.Counter(it.reason for it in issues_all))
    if all("issue_counts" in m for m in metas):  # shards of older versions list every issue
        by_reason = dict(sum((collections.Counter(m["issue_counts"]) for m in metas), collections.Counter()))
    n_issues = sum(by_reason.values())
    skipped_file = Path(f"{out}.skipped.jsonl")
    if issues_all:
        with open(skipped_file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(dataclasses.asdict(it), ensure_ascii=False) + "\n" for it in issues_all)
    else:
        skipped_file.unlink(missing_ok=True)
    stats_list = []
    for k in keys:
        info = read_index(outputs[k])
        text_bytes = sum(m["text_bytes"][k] for m in metas)
        st = {
            "dataset_prefix": outputs[k],
            "json_key": k,
            "inputs": [str(p) for p in files],
            "fingerprints": fingerprints,
            "tokenizer": {
                "directory": spec.directory, "tokenizer_json_sha256": spec.sha256, "vocab_size": spec.vocab_size,
                "eod_id": spec.eod_id, "eod_token": spec.eod_token, "prefix_ids": list(spec.prefix_ids),
                "dtype": np.dtype(spec.dtype).name,
            },
            "engine": engine_name,
            "documents": info.documents,
            "tokens": info.tokens,
            "text_bytes": text_bytes,
            "input_bytes": sum(p.stat().st_size for p in files),
            "lines": sum(m["lines"] for m in metas),
            "skipped": {
                "total": n_issues, "by_reason": by_reason, "listed": len(issues_all),
                "examples": [dataclasses.asdict(it) for it in issues_all[:MAX_EXAMPLES]],
                "all_in": str(skipped_file) if issues_all else None,
            },
            "tokens_per_document": length_distribution(outputs[k]),
            "bytes_per_token": round(text_bytes / info.tokens, 3) if info.tokens else None,
            "token_budget": {
                "global_batch_size": global_batch_size, "seq_length": seq_length,
                "tokens_per_step": global_batch_size * seq_length,
                "supported_steps": supported_steps(info.tokens, global_batch_size, seq_length),
                "rule": "((tokens - 1) // seq_length) // global_batch_size, one epoch (Megatron GPTDataset)",
            },
            "shards": {"total": len(files), "reused": reused},
            "workers": workers,
            "elapsed_s": round(elapsed, 3),
            "text_mb_per_s": round(text_bytes / 1e6 / elapsed, 3) if elapsed > 0 and not reused else None,
            "created_by": command or "launcher.data.tokenize_jsonl",
        }
        _write_json_atomic(Path(f"{outputs[k]}.stats.json"), st)
        stats_list.append(st)
    shutil.rmtree(work, ignore_errors=True)
    return _result_from_stats(outputs, stats_list, t_start, len(files), reused=reused)


def _result_from_stats(outputs: dict[str, str], stats: list[dict[str, Any]], t_start: float, n_files: int,
                       reused: int = 0, up_to_date: bool = False) -> TokenizeResult:
    first = stats[0]
    return TokenizeResult(
        outputs=dict(outputs),
        stats={s["json_key"]: s for s in stats},
        documents=int(first["documents"]),
        tokens=sum(int(s["tokens"]) for s in stats),
        text_bytes=sum(int(s["text_bytes"]) for s in stats),
        skipped=int(first["skipped"]["total"]),
        skipped_by_reason=dict(first["skipped"]["by_reason"]),
        shards_total=n_files,
        shards_reused=n_files if up_to_date else reused,
        engine=str(first["engine"]),
        elapsed_s=time.monotonic() - t_start,
        up_to_date=up_to_date,
    )


def _init_worker_inline(spec: TokenizerSpec, engine: str, opts: _Options, prebuilt: Any = None) -> None:
    """workers=1: tokenize in this process (no pool, no pickling)."""
    _init_worker(spec, engine, opts, prebuilt)


def _run_shards(files: list[Path], pending: list[int], shard_prefix: list[Path], fingerprints: list[dict[str, Any]],
                spec: TokenizerSpec, opts: _Options, strict: bool, pool: Any, workers: int, prog: _Progress,
                block_bytes: int) -> None:
    """Stream blocks of every pending shard through the workers, in order, with a bounded backlog."""
    max_in_flight = 2 * workers + 1
    done_before = 0  # raw bytes of finished pending shards, for the progress fraction

    def tasks() -> Iterator[tuple[int, Any, int]]:
        for i in pending:
            try:
                for block, first_line, pos in _iter_blocks(files[i], block_bytes):
                    yield i, (block, first_line), pos
            except DataError as e:
                # Raised when this point of the stream is reached, so that earlier shards still finish.
                yield i, e, -1
                return
            yield i, None, -1  # end of shard i

    in_flight: collections.deque[tuple[int, Any, int]] = collections.deque()
    writers: dict[str, IndexedWriter] = {}
    shard_state: dict[str, Any] = {}
    it = tasks()
    exhausted = False

    def submit() -> None:
        nonlocal exhausted
        while not exhausted and len(in_flight) < max_in_flight:
            try:
                i, payload, pos = next(it)
            except StopIteration:
                exhausted = True
                return
            if payload is None or isinstance(payload, DataError):
                in_flight.append((i, payload, pos))
            elif pool is not None:
                in_flight.append((i, pool.submit(_process_block, *payload), pos))
            else:
                in_flight.append((i, payload, pos))
                return  # inline: compute lazily, one at a time

    current = -1
    try:
        submit()
        while in_flight:
            i, handle, pos = in_flight.popleft()
            if i != current:
                current = i
                writers = {k: IndexedWriter(f"{shard_prefix[i]}_{k}_document", spec.dtype) for k in opts.json_keys}
                shard_state = {"lines": 0, "issues": [], "issue_counts": {}, "text_bytes": {k: 0 for k in opts.json_keys}}
            if isinstance(handle, DataError):
                raise handle
            if handle is None:  # end of shard: finalize its files, then its done-marker (last)
                for w in writers.values():
                    w.finalize()
                _write_json_atomic(Path(f"{shard_prefix[i]}.done.json"), {
                    "fingerprint": fingerprints[i], "lines": shard_state["lines"], "issues": shard_state["issues"],
                    "issue_counts": shard_state["issue_counts"], "text_bytes": shard_state["text_bytes"],
                })
                writers = {}
                done_before += files[i].stat().st_size
                submit()
                continue
            res: _BlockResult = handle.result() if pool is not None else _process_block(*handle)
            submit()
            if res.issues:
                if strict:
                    ln, reason, detail = res.issues[0]
                    raise DataError(f"{files[i]}:{ln}: {reason}: {detail} (--strict stops at the first bad line)")
                # counted all, listed up to MAX_LISTED per shard: 16 M blank lines must not become 16 M records
                counts = shard_state["issue_counts"]
                for r, n in res.issue_counts.items():
                    counts[r] = counts.get(r, 0) + n
                room = MAX_LISTED - len(shard_state["issues"])
                shard_state["issues"].extend(
                    {"file": str(files[i]), "line": ln, "reason": r, "detail": d} for ln, r, d in res.issues[:room]
                )
            shard_state["lines"] += res.lines
            n_docs = 0
            for k in opts.json_keys:
                writers[k].add_documents(res.tokens[k], res.lengths[k])
                shard_state["text_bytes"][k] += res.text_bytes[k]
                n_docs = len(res.lengths[k])
            prog.update(n_docs, res.text_bytes[opts.json_keys[0]], done_before + pos)
        prog.update(0, 0, done_before, force=True)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
