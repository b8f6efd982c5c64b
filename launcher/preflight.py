"""Pre-flight checks: everything that can be known to fail before a job waits in the queue.

Pure-ish: the checks take facts that were already gathered (the plan's numbers, an environment mapping, the container
mounts) and read the filesystem only through a :class:`FileSystemView` passed in, so a plan stays pure and a test
can point the checks at real files in a temporary directory. No subprocess, no network, no writes.

Every check returns :class:`~launcher.errors.Problem` objects naming where (flag, profile field or path), the value
and a fix; :func:`run_preflight` runs them all and returns every problem at once. Secrets are referred to by name
only (``HF_TOKEN``): no message ever contains an environment value other than the NVTE_* switches.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from launcher.errors import Problem
from launcher.jobspec import Attention, Parallelism
from launcher.memory import MemoryEstimate
from launcher.models import ModelSpec

# --------------------------------------------------------------------------------------------------- filesystem


class FileSystemView(Protocol):
    """The only way preflight touches files (reads only)."""

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def size(self, path: str) -> int: ...

    def read(self, path: str, offset: int, length: int) -> bytes: ...

    def listdir(self, path: str) -> list[str]: ...

    def glob(self, pattern: str) -> list[str]:
        """Files a JSONL input names: the file, a glob's matches (``**`` recursive) or a directory's
        .jsonl/.jsonl.gz files below it, sorted."""
        ...

    def free_bytes(self, path: str) -> int | None:
        """Free bytes of the filesystem ``path`` is (or would be) on; None where nothing on the way exists."""
        ...


class RealFileSystem:
    """:class:`FileSystemView` over the real filesystem (of the machine that runs the check)."""

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def read(self, path: str, offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def glob(self, pattern: str) -> list[str]:
        import glob

        if os.path.isdir(pattern):
            return sorted(os.path.join(d, f) for d, _, fs in os.walk(pattern) for f in fs
                          if f.endswith((".jsonl", ".jsonl.gz")))
        if any(ch in pattern for ch in "*?["):
            return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        return [pattern] if os.path.isfile(pattern) else []

    def free_bytes(self, path: str) -> int | None:
        from launcher.checkpoints import disk_facts

        return disk_facts(path)[0]


def container_to_host(path: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """Host path of a container path, given ``(host, container)`` mounts; None if no mount covers it.

    The longest matching container prefix wins (a mount of /data/ja inside a mount of /data), as in Docker/Pyxis.
    """
    norm = os.path.normpath(path)
    best: tuple[int, str] | None = None
    for host, cont in mounts:
        c = os.path.normpath(cont)
        if norm == c or norm.startswith(c.rstrip("/") + "/"):
            if best is None or len(c) > best[0]:
                rest = norm[len(c):].lstrip("/")
                best = (len(c), os.path.join(os.path.normpath(host), rest) if rest else os.path.normpath(host))
    return best[1] if best else None


# --------------------------------------------------------------------------------------------------- .idx reader

IDX_MAGIC = b"MMIDIDX\x00\x00"
# megatron/core/datasets/indexed_dataset.py DType codes -> item size in bytes
IDX_DTYPE_SIZES: dict[int, int] = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
IDX_HEADER = 9 + 8 + 1 + 8 + 8  # magic, u64 version, u8 dtype, u64 N, u64 D = 34 bytes


class IdxError(ValueError):
    """An ``.idx`` file that megatron-core's IndexedDataset would not load."""


@dataclass(frozen=True)
class IdxInfo:
    """Header and token count of a Megatron ``.idx`` file."""

    version: int
    dtype_code: int
    itemsize: int
    num_sequences: int
    num_documents: int  # D - 1 (the document index has one more entry than documents)
    num_tokens: int  # sum of the int32 sequence lengths


def read_idx(fs: FileSystemView, idx_path: str) -> IdxInfo:
    """Read an ``.idx`` header and sum its sequence lengths (layout: ../shared/REFERENCE.md section 4).

    Little-endian: magic ``MMIDIDX\\x00\\x00``, u64 version 1, u8 dtype code, u64 N, u64 D, int32[N] lengths,
    int64[N] byte offsets, int64[D] document indices (then int8[N] modes only for multimodal data).
    """
    head = fs.read(idx_path, 0, IDX_HEADER)
    if len(head) < IDX_HEADER or head[:9] != IDX_MAGIC:
        raise IdxError(f"{idx_path}: not a Megatron index (magic {head[:9]!r}, expected {IDX_MAGIC!r})")
    version, dtype_code, n, d = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise IdxError(f"{idx_path}: index version {version}, expected 1")
    if dtype_code not in IDX_DTYPE_SIZES:
        raise IdxError(f"{idx_path}: unknown dtype code {dtype_code} (known: {sorted(IDX_DTYPE_SIZES)})")
    size = fs.size(idx_path)
    expected = IDX_HEADER + 12 * n + 8 * d
    if size not in (expected, expected + n):  # + int8[N] modes for multimodal indices
        raise IdxError(f"{idx_path}: {size} bytes, but N={n} sequences and D={d} need {expected} "
                       "(truncated or not written by megatron's IndexedDatasetBuilder)")
    lengths = array("i")
    lengths.frombytes(fs.read(idx_path, IDX_HEADER, 4 * n))
    if sys.byteorder != "little":
        lengths.byteswap()
    return IdxInfo(version=version, dtype_code=dtype_code, itemsize=IDX_DTYPE_SIZES[dtype_code], num_sequences=n,
                   num_documents=max(d - 1, 0), num_tokens=sum(lengths))


# --------------------------------------------------------------------------------------------------- facts

McoreAttnBackend = Literal["auto", "flash", "fused", "unfused", "local"]

# Which megatron-core ``attention_backend`` each of our attention choices runs with. te: NeMo's default (auto, TE
# picks flash/fused); sdpa: megatron-core's local spec with our SDPA core attention ("local").
MCORE_BACKEND: dict[str, McoreAttnBackend] = {"te": "auto", "sdpa": "local"}

# megatron-core LanguageModule._set_attention_backend: each backend *sets* these three variables and raises
# "NVTE_... set to X, but expected Y for attention backend type ..." at model build if one is already set otherwise.
NVTE_EXPECTED: dict[McoreAttnBackend, dict[str, str]] = {
    "auto": {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "1", "NVTE_UNFUSED_ATTN": "1"},
    "flash": {"NVTE_FLASH_ATTN": "1", "NVTE_FUSED_ATTN": "0", "NVTE_UNFUSED_ATTN": "0"},
    "fused": {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "1", "NVTE_UNFUSED_ATTN": "0"},
    "unfused": {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "0", "NVTE_UNFUSED_ATTN": "1"},
    "local": {"NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "0", "NVTE_UNFUSED_ATTN": "0"},
}

HF_TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
HF_OFFLINE_NAMES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class PreflightFacts:
    """What the checks look at. Paths are as the *job* sees them (container paths when ``mounts`` is non-empty)."""

    model: ModelSpec
    parallelism: Parallelism
    gpus: int  # GPUs the train stage gets: nodes x gpus_per_node
    seq_length: int
    max_steps: int
    attention: Attention = "te"
    env: Mapping[str, str] = field(default_factory=dict)  # the job's environment (names matter; values only NVTE_*)
    # (weight, prefix) of the training blend; weight None = proportional to tokens (launcher.mix)
    train_data: Sequence[tuple[float | None, str]] = ()
    jsonl_inputs: Sequence[tuple[str, str]] = ()  # (the item as given, JSONL glob as the job sees it)
    valid_data: Sequence[str] = ()
    test_data: Sequence[str] = ()
    data_planned: bool = False  # the tokenize stage writes all prefixes: do not look for them yet
    planned_prefixes_host: frozenset[str] = frozenset()  # host paths of prefixes the tokenize stage will write
    mounts: Sequence[tuple[str, str]] = ()  # (host, container); empty: the job sees host paths
    uses_container: bool = False
    container_image: str | None = None
    tokenizer_dir: str = ""  # HF tokenizer (usually the downloaded model directory)
    hf_model_dir: str = ""  # HF weights the convert stage reads
    base_checkpoint: str = ""  # converted NeMo checkpoint train restores from
    download_planned: bool = False  # the download stage runs (fills hf_model_dir / tokenizer_dir)
    convert_planned: bool = False  # the convert stage runs (writes base_checkpoint)
    random_init: bool = False  # --random-init (benchmarks): no base weights needed, only the tokenizer
    gated_repo: bool = True  # meta-llama repos are gated: downloading needs an accepted licence and a token
    hf_token_file: str = ""  # host path of huggingface-cli's token file, if one should count as a token
    checkpoint_dir: str = ""  # this run's own checkpoint directory
    checkpoint_bytes: int = 0  # one checkpoint with optimizer state (launcher.checkpoints); 0: not checked
    ckpt_keep: int = 2  # finished checkpoints kept; one more is in flight at the peak
    # "auto": resume_if_exists (the run's own checkpoints, else the base weights) is itself the decision;
    # None: not decided -- an error when checkpoints exist
    resume: Literal["auto", "resume", "fresh"] | None = "auto"
    memory: MemoryEstimate | None = None  # the itemised estimate, when the caller has it
    predicted_peak_gib: float = 0.0  # used when ``memory`` is None (e.g. from PlanChoice.memory_json())
    strategy: str = ""
    capacity_gib: float = 0.0
    host_need_gib: float = 0.0  # offloaded state of all ranks of a node + base allowance
    host_capacity_gib: float = 0.0


# --------------------------------------------------------------------------------------------------- checks


def check_parallelism(model: ModelSpec, par: Parallelism, gpus: int, seq_length: int) -> list[Problem]:
    """TP*PP*CP*DP = GPUs, GBS % (MBS*DP), heads and query groups % TP, layers % PP, seq vs positions and CP."""
    out: list[Problem] = []
    if par.world_size != gpus:
        out.append(Problem("error", "parallelism", f"tp*pp*cp*dp = {par.tp}*{par.pp}*{par.cp}*{par.dp} = "
                                                   f"{par.world_size}, but the train stage has {gpus} GPUs; "
                                                   f"fix: dp={gpus // max(1, par.tp * par.pp * par.cp)} or change "
                                                   "--nodes"))
    if par.mbs < 1 or par.dp < 1 or par.gbs % (par.mbs * par.dp):
        out.append(Problem("error", "--gbs", f"gbs={par.gbs} is not divisible by mbs*dp = {par.mbs}*{par.dp}; fix: "
                                             f"--gbs {_round_up(par.gbs, max(1, par.mbs * par.dp))} or another --mbs"))
    if par.tp < 1 or model.num_attention_heads % par.tp:
        out.append(Problem("error", "--tp", f"tp={par.tp}: {model.name} has {model.num_attention_heads} attention "
                                            f"heads; allowed: {_divs(model.num_attention_heads)}"))
    elif model.num_query_groups % par.tp:
        out.append(Problem("error", "--tp", f"tp={par.tp}: {model.name} has {model.num_query_groups} query groups "
                                            f"(KV heads); allowed: {_divs(model.num_query_groups)}"))
    if par.pp < 1 or model.num_layers % par.pp:
        out.append(Problem("error", "--pp", f"pp={par.pp}: {model.name} has {model.num_layers} layers; allowed: "
                                            f"{_divs(model.num_layers)}"))
    if seq_length > model.max_position_embeddings:
        out.append(Problem("error", "--seq-length", f"seq_length={seq_length} > {model.name}'s max_position_embeddings "
                                                    f"{model.max_position_embeddings}"))
    if par.cp > 1 and seq_length % (2 * par.cp):
        out.append(Problem("error", "--cp", f"cp={par.cp}: context parallel splits each sequence into 2*cp chunks; "
                                            f"seq_length={seq_length} is not divisible by {2 * par.cp}"))
    if par.sequence_parallel and par.tp == 1:
        out.append(Problem("warning", "sequence_parallel", "sequence_parallel=True with tp=1 has no effect "
                                                     "(megatron turns it off)"))
    if par.tp > 1 and not par.sequence_parallel:
        out.append(Problem("warning", "sequence_parallel", f"tp={par.tp} without sequence parallel: activations are "
                                                     "replicated across the TP group; turn it on"))
    return out


def check_attention_env(attention: Attention, env: Mapping[str, str],
                        backend: McoreAttnBackend | None = None) -> list[Problem]:
    """NVTE_FLASH_ATTN / NVTE_FUSED_ATTN / NVTE_UNFUSED_ATTN against the attention backend the job will build.

    megatron-core sets the three itself from ``attention_backend`` and raises at model build when one is already set
    to something else -- after the queue wait. So any setting that disagrees is an error here.
    """
    be = backend or MCORE_BACKEND.get(attention, "auto")
    expected = NVTE_EXPECTED[be]
    out: list[Problem] = []
    for name, want in expected.items():
        have = env.get(name)
        if have is not None and have != want:
            out.append(Problem("error", f"env {name}",
                               f"{name}={have}, but attention={attention} builds megatron-core's '{be}' attention "
                               f"backend, which requires {name} unset or {want} and stops at model build otherwise; "
                               f"fix: remove {name} from the profile's env / your shell (choose the backend with "
                               "--attention instead)"))
    return out


def _host_view(path: str, facts: PreflightFacts) -> str | None:
    if not facts.mounts:
        return path
    return container_to_host(path, facts.mounts)


def _mount_hint(facts: PreflightFacts) -> str:
    return ", ".join(f"{h}:{c}" for h, c in facts.mounts) or "none"


def check_data(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """Every JSONL glob matches readable files and every prefix is a readable ``.bin/.idx`` pair, through the
    mounts; the training blend as a whole and each part hold the run's tokens (epochs)."""
    out: list[Problem] = []
    if not facts.train_data:
        out.append(Problem("error", "--data", "no training data given; fix: --data PREFIX_text_document or JSONL "
                                              "files"))
    for where, pattern in facts.jsonl_inputs:
        out += check_jsonl_input(facts, fs, where, pattern)
    tokens: dict[str, int | None] = {}
    labelled = [("--data", p) for _, p in facts.train_data]
    labelled += [("valid_data", p) for p in facts.valid_data] + [("test_data", p) for p in facts.test_data]
    for where, prefix in labelled:
        probs, n = _check_prefix(facts, fs, where, prefix)
        out += probs
        tokens.setdefault(prefix, n)
    if not any(p.severity == "error" and p.where.startswith("--data") for p in out):
        out += check_token_budget(facts, [tokens.get(p) for _, p in facts.train_data])
    return out


def check_jsonl_input(facts: PreflightFacts, fs: FileSystemView, where: str, pattern: str) -> list[Problem]:
    """A JSONL file, glob or directory of the tokenize stage matches at least one readable .jsonl/.jsonl.gz file
    as the job will see it (the rule of ``launcher.data.tokenize.expand_inputs``), before the download and the
    queue rather than in the tokenize job."""
    host = _host_view(pattern, facts)
    if host is None:
        return [Problem("error", where, f"{pattern} is not visible inside the container: no mount covers it "
                                        f"(mounts: {_mount_hint(facts)}); fix: use a path under the data area")]
    shown = pattern if host == pattern else f"{pattern} (host {host})"
    files = fs.glob(host)
    if not files:
        return [Problem("error", where, f"{shown} matches no file; allowed: a JSONL file, a glob matching "
                                        ".jsonl/.jsonl.gz files, a directory holding them, or a prepared "
                                        "..._text_document prefix; fix: correct the path or the pattern")]
    out = []
    wrong = [f for f in files if not f.endswith((".jsonl", ".jsonl.gz", ".json"))]
    if wrong:
        out.append(Problem("error", where, f"{shown} matches {len(wrong)} file(s) that are not JSONL, e.g. "
                                           f"{wrong[0]}; allowed: .jsonl, .jsonl.gz (.json is read as JSONL)"))
    unreadable = [f for f in files if not _readable(fs, f)]
    if unreadable:
        out.append(Problem("error", where, f"{shown}: {len(unreadable)} of {len(files)} matching file(s) cannot "
                                           f"be read, e.g. {unreadable[0]}; fix: permissions (the job reads them "
                                           "as the submitting user)"))
    return out


def _readable(fs: FileSystemView, path: str) -> bool:
    try:
        fs.read(path, 0, 1)
        return True
    except OSError:
        return False


def _check_prefix(facts: PreflightFacts, fs: FileSystemView, where: str,
                  prefix: str) -> tuple[list[Problem], int | None]:
    """One prefix: visible, a consistent .bin/.idx pair; its tokens (None where the tokenize stage writes it)."""
    where = f"{where} {prefix}"
    host = _host_view(prefix, facts)
    if host is not None and (host in facts.planned_prefixes_host or facts.data_planned):
        return [], None  # the tokenize stage writes it
    if host is None:
        return [Problem("error", where, f"{prefix} is not visible inside the container: no mount covers it "
                                        f"(mounts: {_mount_hint(facts)}); fix: use a path under one of the "
                                        "container mount points")], None
    shown = prefix if host == prefix else f"{prefix} (host {host})"
    missing = [ext for ext in (".bin", ".idx") if not fs.exists(host + ext)]
    if missing:
        return [Problem("error", where,
                        f"{shown}: missing {' and '.join(host + e for e in missing)}; a Megatron prefix names a "
                        ".bin/.idx pair without the extension (e.g. .../ja_text_document); fix: run the tokenize "
                        "stage (pass the JSONL files to --data) or correct the path")], None
    try:
        info = read_idx(fs, host + ".idx")
        bin_size = fs.size(host + ".bin")
    except IdxError as e:
        return [Problem("error", where, f"{e}; fix: re-run the tokenize stage")], None
    except OSError as e:  # a directory named like the file, no permission, a vanished mount
        return [Problem("error", where, f"{shown}: cannot read {e.filename or host}: {e.strerror}; a Megatron "
                                        "prefix names two files, .bin and .idx")], None
    if bin_size != info.num_tokens * info.itemsize:
        return [Problem("error", where,
                        f"{shown}.bin has {bin_size} bytes but its .idx lists {info.num_tokens} tokens of "
                        f"{info.itemsize} B = {info.num_tokens * info.itemsize}; the pair is inconsistent "
                        "(interrupted write?); fix: re-run the tokenize stage")], None
    return [], info.num_tokens


def check_token_budget(facts: PreflightFacts, tokens: Sequence[int | None]) -> list[Problem]:
    """Epochs of the blend as a whole and of each part: steps x GBS x seq tokens at the resolved shares.

    A part of several is named when it repeats more than ``REPEAT_WARN_EPOCHS`` times (small replay sets repeat
    on purpose); a lone dataset, and the blend as a whole, when it repeats at all. Parts whose tokens are not
    known yet (the tokenize stage writes them) are left to the job, which logs its resolved mix."""
    from launcher.mix import REPEAT_WARN_EPOCHS, MixError, epochs, resolve_weights

    needed = facts.max_steps * facts.parallelism.gbs * facts.seq_length
    parts = list(facts.train_data)
    if needed <= 0 or not parts:
        return []
    try:
        shares = resolve_weights([w for w, _ in parts], tokens, [p for _, p in parts])
    except MixError as e:
        if any(t is None for t in tokens):
            return []  # weights by tokens of data not tokenized yet: resolved in the job
        return [Problem("error", "--data", f"{e}")]
    run = f"{facts.max_steps} steps x GBS {facts.parallelism.gbs} x seq {facts.seq_length} = {needed:,} tokens"
    out: list[Problem] = []
    for (w, prefix), share, n, reps in zip(parts, shares, tokens, epochs(shares, tokens, needed)):
        if n == 0:
            out.append(Problem("error", f"--data {prefix}", f"{prefix} holds no tokens"))
        elif reps is not None and reps > (REPEAT_WARN_EPOCHS if len(parts) > 1 else 1.0):
            out.append(Problem("warning", f"--data {prefix}",
                               f"{prefix} holds {n:,} tokens; {run}"
                               + (f" x share {share:.2f}" if share < 1 else "")
                               + f" = {share * needed:,.0f} tokens repeat it {reps:.1f} times (epochs); fix: more "
                               f"data, a smaller weight or --max-steps {max(1, int(facts.max_steps / reps))} for "
                               "one pass"))
    known: list[int] = [n for n in tokens if n is not None]
    total = sum(known)
    if len(parts) > 1 and len(known) == len(parts) and 0 < total < needed:
        out.append(Problem("warning", "--data", f"the blend holds {total:,} tokens in {len(parts)} datasets; "
                                                f"{run} repeat it {needed / total:.1f} times as a whole"))
    return out


def _dir_has(fs: FileSystemView, host: str, names: Sequence[str]) -> bool:
    try:
        present = set(fs.listdir(host))
    except OSError:
        return False
    return any(n in present for n in names)


def _dir_state(fs: FileSystemView, facts: PreflightFacts, path: str, names: Sequence[str]) -> str:
    """"invisible" (no mount covers it), "missing", "empty" (none of ``names`` in it) or "ok"."""
    host = _host_view(path, facts)
    if host is None:
        return "invisible"
    if not fs.is_dir(host):
        return "missing"
    return "ok" if _dir_has(fs, host, names) else "empty"


def _is_under(path: str, parent: str) -> bool:
    p, q = os.path.normpath(path), os.path.normpath(parent)
    return p == q or p.startswith(q.rstrip("/") + "/")


def check_model_files(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """Tokenizer, HF weights and the base checkpoint present, or the stage that makes them planned;
    HF offline mode and gated-repo access consistent. Tokens are named, never shown."""
    out: list[Problem] = []
    env = facts.env
    offline = [n for n in HF_OFFLINE_NAMES if env.get(n, "").strip().lower() in ("1", "true", "yes", "on")]
    repo = facts.model.hf_repo
    hf_names = ("config.json",)
    tok_names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    model_dir = facts.hf_model_dir or facts.tokenizer_dir
    model_state = _dir_state(fs, facts, model_dir, hf_names) if model_dir else "ok"
    # the HF weights are needed when convert runs (or there is no converted checkpoint); the tokenizer always
    model_needed = not facts.random_init and (facts.convert_planned or not facts.base_checkpoint)
    tok_state = _dir_state(fs, facts, facts.tokenizer_dir, tok_names) if facts.tokenizer_dir else "ok"
    download_fills_tok = bool(model_dir) and _is_under(facts.tokenizer_dir, model_dir)
    need_download = (model_needed and model_state != "ok") or (tok_state != "ok" and download_fills_tok)
    if model_state == "invisible":
        out.append(Problem("error", f"hf_model_dir {model_dir}", f"{model_dir} is not visible inside the container: "
                                                                 f"no mount covers it (mounts: {_mount_hint(facts)})"))
    elif need_download and not facts.download_planned and model_state != "ok":
        out.append(Problem("error", f"hf_model_dir {model_dir}",
                           f"{_host_view(model_dir, facts)} holds no Hugging Face model ({model_state}: no "
                           "config.json) and no download stage is planned; fix: let the download stage run or "
                           "point --model-dir at a downloaded model"))
    elif need_download and facts.download_planned:
        if offline:
            out.append(Problem("error", f"env {offline[0]}",
                               f"{offline[0]} is on, but {repo} is not in {_host_view(model_dir, facts)} and the "
                               f"download stage must fetch it; fix: unset {offline[0]} for the download, or put the "
                               "model there first (the stage then has nothing to do)"))
        has_token = any(env.get(n) for n in HF_TOKEN_NAMES) or bool(
            facts.hf_token_file and fs.exists(facts.hf_token_file))
        if facts.gated_repo and not has_token:
            out.append(Problem("error", "env HF_TOKEN",
                               f"{repo} is a gated repository: the download needs a token of an account that accepted "
                               "its licence; fix: export HF_TOKEN in the submitting shell (passed to the job by name, "
                               "never written into scripts) or run `huggingface-cli login`"))
    if tok_state != "ok" and not (download_fills_tok and facts.download_planned) and model_state != "invisible":
        out.append(Problem("error", f"tokenizer_dir {facts.tokenizer_dir}",
                           f"{_host_view(facts.tokenizer_dir, facts) or facts.tokenizer_dir}: {tok_state}; it should "
                           "hold a Hugging Face tokenizer (tokenizer.json); without it NeMo falls back to the GPT-2 "
                           "tokenizer; fix: let the download stage fill it or correct the path"))
    if facts.base_checkpoint and not facts.convert_planned:
        st = _dir_state(fs, facts, facts.base_checkpoint, ("context", "weights"))
        if st != "ok":
            out.append(Problem("error", f"base_checkpoint {facts.base_checkpoint}",
                               f"{_host_view(facts.base_checkpoint, facts) or facts.base_checkpoint}: {st}; it should "
                               "hold a NeMo 2 checkpoint (context/, weights/); fix: let the convert stage run"))
    if model_state == "ok" and not need_download and not offline and model_dir:
        out.append(Problem("warning", "env HF_HUB_OFFLINE",
                           "the model is local but HF_HUB_OFFLINE is not set: transformers may still contact the "
                           "hub (and fail on nodes without internet); fix: set HF_HUB_OFFLINE=1 for the job"))
    return out


def check_container_image(facts: PreflightFacts) -> list[Problem]:
    """A container profile names its image."""
    if facts.uses_container and not (facts.container_image or "").strip():
        return [Problem("error", "container.image", "this profile runs the job in a container but names no image; "
                                                    "fix: --container-image nvcr.io/nvidia/nemo:25.02.01 (a NeMo 2 "
                                                    "container, <= 25.11)")]
    return []


def check_mounts(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """Every mount's host side exists (otherwise the container runtime fails at job start)."""
    return [Problem("error", f"mount {host}:{cont}", f"host path {host} does not exist; the container runtime fails "
                                                     "at start; fix: create it or correct the profile's storage")
            for host, cont in facts.mounts if not fs.exists(host)]


def check_container(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """Image given for container profiles; host paths of mounts exist."""
    return check_container_image(facts) + check_mounts(facts, fs)


def check_checkpoint_dir(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """Existing checkpoints mean resume or start fresh: that must be an explicit decision."""
    if not facts.checkpoint_dir:
        return []
    host = _host_view(facts.checkpoint_dir, facts)
    if host is None:
        return [Problem("error", f"checkpoint_dir {facts.checkpoint_dir}",
                        f"not visible inside the container (mounts: {_mount_hint(facts)})")]
    has = fs.is_dir(host) and bool(_safe_listdir(fs, host))
    start = "random weights (--random-init)" if facts.random_init else "the base weights"
    if has and facts.resume in (None, "auto"):
        return [Problem("error", "--resume/--fresh",
                        f"{host} already holds checkpoints; decide: --resume (continue from the latest "
                        "one) or --fresh (the run directory is moved aside to <dir>.<timestamp>, never deleted, and "
                        f"training starts from {start})")]
    if facts.resume == "resume" and not has:
        return [Problem("warning", f"checkpoint_dir {facts.checkpoint_dir}",
                        f"resume asked, but {host} holds no checkpoint: training starts from {start}")]
    if facts.resume == "fresh" and has:
        return [Problem("warning", f"checkpoint_dir {facts.checkpoint_dir}",
                        f"--fresh: {host} is moved aside (with its run directory) before anything is submitted")]
    return []


def check_checkpoint_space(facts: PreflightFacts, fs: FileSystemView) -> list[Problem]:
    """``keep + 1`` checkpoints (one save in flight) fit the free space of the checkpoint directory's filesystem,
    as the job sees it. On the H200 a third checkpoint in flight filled the 64 GiB disk and killed the run."""
    from launcher.checkpoints import bytes_needed, gib
    from launcher.resume import finished_checkpoints

    if not facts.checkpoint_dir or not facts.checkpoint_bytes:
        return []
    host = _host_view(facts.checkpoint_dir, facts)
    if host is None:
        return []  # check_checkpoint_dir names it
    free = fs.free_bytes(host)
    if free is None:
        return []
    have = len(finished_checkpoints(_safe_listdir(fs, host)))
    need = bytes_needed(facts.checkpoint_bytes, facts.ckpt_keep, have)
    if need <= free:
        return []
    one = facts.checkpoint_bytes
    fits = free // one - 1 + have
    fixes = [f"--ckpt-keep {fits}" if fits >= 1 and fits < facts.ckpt_keep else None,
             f"free {gib(need - free)} on that filesystem",
             "a storage.runs area with more room (the run directory holds the checkpoints)",
             "fewer layers (--num-layers) for a test run" if facts.model.num_layers > 2 else None]
    return [Problem("error", f"checkpoint_dir {facts.checkpoint_dir}",
                    f"one checkpoint with optimizer state is {gib(one)} ({facts.model.name}, "
                    f"{facts.model.num_layers} layers, 14 B/param); --ckpt-keep {facts.ckpt_keep} plus one being "
                    f"written{f', less the {have} already there,' if have else ''} need {gib(need)}, but {host} has "
                    f"{gib(free)} free; fix: {' or '.join(f for f in fixes if f)}")]


def _safe_listdir(fs: FileSystemView, path: str) -> list[str]:
    try:
        return fs.listdir(path)
    except OSError:
        return []


def check_memory(facts: PreflightFacts) -> list[Problem]:
    """Predicted peak GPU memory (and host memory for offloaded state) within capacity."""
    m = facts.memory
    peak = m.total_gib if m is not None else facts.predicted_peak_gib
    strategy = m.strategy if m is not None else facts.strategy
    out: list[Problem] = []
    if facts.capacity_gib and peak > facts.capacity_gib:
        detail = ""
        if m is not None:
            detail = (f", peak at {m.phase}: weights {m.weights_gib:.1f}, grads {m.grads_gib:.1f}, optimizer "
                      f"{m.optimizer_gib:.1f}, setup transient {m.setup_transient_gib:.1f}, activations "
                      f"{m.activations_gib:.1f}, logits {m.logits_gib:.1f}")
        out.append(Problem("error", "memory",
                           f"predicted peak {peak:.1f} GiB per GPU > {facts.capacity_gib:.1f} GiB (strategy "
                           f"{strategy}{detail}); fix: let the planner choose (drop pinned --tp/--pp/--cp/--mbs/"
                           "--recompute), --recompute full or --optimizer-offload on"))
    if facts.host_capacity_gib and facts.host_need_gib > facts.host_capacity_gib:
        out.append(Problem("error", "memory", f"offloaded optimizer state needs {facts.host_need_gib:.0f} GiB of host "
                                              f"memory per node > {facts.host_capacity_gib:.0f} GiB; fix: more nodes "
                                              "(shards it) or --optimizer-offload off on larger GPUs"))
    return out


def run_preflight(facts: PreflightFacts, fs: FileSystemView | None = None, *,
                  filesystem: bool = True) -> list[Problem]:
    """Every check; every problem at once (errors first, then warnings).

    ``filesystem=False`` runs only the checks that need no file (parallelism, NVTE_*, container image, memory):
    for a dry run on a machine that does not see the cluster's storage.
    """
    fs = fs or RealFileSystem()
    out = (check_parallelism(facts.model, facts.parallelism, facts.gpus, facts.seq_length)
           + check_attention_env(facts.attention, facts.env)
           + check_memory(facts)
           + check_container_image(facts))
    if filesystem:
        out += (check_mounts(facts, fs) + check_data(facts, fs) + check_model_files(facts, fs)
                + check_checkpoint_dir(facts, fs) + check_checkpoint_space(facts, fs))
    return [p for p in out if p.severity == "error"] + [p for p in out if p.severity != "error"]


def _parse_blend(items: Sequence[object]) -> list[tuple[float, str]]:
    """Megatron's data_prefix list: ``[prefix]`` or ``[w1, prefix1, w2, prefix2, ...]``."""
    if all(isinstance(x, str) for x in items):
        return [(1.0, str(x)) for x in items]
    out: list[tuple[float, str]] = []
    for i in range(0, len(items) - 1, 2):
        w, p = items[i], items[i + 1]
        out.append((float(w) if isinstance(w, (int, float)) else 1.0, str(p)))
    return out


def facts_from_plan(plan: Any, env: Mapping[str, str]) -> PreflightFacts:
    """Facts of a ``launcher.plan.LaunchPlan`` (duck-typed: no import of the plan module).

    ``env`` is the submitting shell's environment; the job sees it with the plan's own ``env`` on top (Slurm and
    the local/docker executors pass it through), so NVTE_* and HF_* are checked on that merge.
    """
    from launcher.checkpoints import checkpoint_bytes
    from launcher.jobspec import validation_sets

    t = plan.jobspec.train
    stages = {s.name: s for s in plan.stages}

    def active(name: str) -> bool:
        s = stages.get(name)
        return s is not None and s.skip_reason is None

    planned: set[str] = set()
    if active("tokenize"):
        planned = {str(v) for v in stages["tokenize"].outputs.values()}
    mem = dict(plan.memory or {})
    hw = plan.profile.hardware
    return PreflightFacts(
        model=plan.model,
        parallelism=plan.parallelism,
        gpus=plan.gpus,
        seq_length=t.seq_length,
        max_steps=t.max_steps,
        attention=t.attention,
        env={**env, **plan.env},
        train_data=[(b.weight, b.prefix) for b in t.blend] if t.blend else _parse_blend(t.train_data),
        jsonl_inputs=tuple(getattr(plan, "jsonl_inputs", ())),
        valid_data=[p for v in validation_sets(t) for p in v.data],
        test_data=[p for _, p in _parse_blend(t.test_data)],
        planned_prefixes_host=frozenset(planned),
        mounts=tuple(plan.mounts),
        uses_container=getattr(plan.profile, "container", None) is not None,
        container_image=plan.container_image,
        tokenizer_dir=t.tokenizer_dir,
        hf_model_dir=plan.jobspec.convert.hf_model_dir,
        base_checkpoint=t.base_checkpoint,
        download_planned=active("download"),
        convert_planned=active("convert"),
        random_init=bool(getattr(t, "random_init", False)),
        checkpoint_dir=t.checkpoint_dir,
        checkpoint_bytes=checkpoint_bytes(plan.model, t.peft),
        ckpt_keep=t.ckpt_keep,
        resume=getattr(plan, "resume", "auto"),
        predicted_peak_gib=float(mem.get("predicted_peak_gib", 0.0)),
        strategy=str(mem.get("strategy", "")),
        capacity_gib=float(mem.get("capacity_gib", getattr(hw, "gpu_memory", 0.0))),
        host_need_gib=float(mem.get("host_gib", 0.0)),
        host_capacity_gib=float(mem.get("host_capacity_gib", getattr(hw, "host_memory_gib", 0.0))),
    )


def prefix_tokens(plan: Any, fs: FileSystemView | None = None) -> dict[str, int]:
    """Tokens of the plan's prepared training prefixes, read from their ``.idx`` (host prefix -> tokens): what
    ``PlanContext.prefix_tokens`` takes, so that a plan rebuilt with it shows token-proportional shares and
    epochs. Prefixes that are missing, unreadable or written by the tokenize stage are left out."""
    fs = fs or RealFileSystem()
    facts = facts_from_plan(plan, {})
    out: dict[str, int] = {}
    for _, prefix in facts.train_data:
        host = _host_view(prefix, facts)
        if host is None or host in facts.planned_prefixes_host:
            continue
        try:
            out[host] = read_idx(fs, host + ".idx").num_tokens
        except (OSError, IdxError):
            continue
    return out


def check_plan(plan: Any, env: Mapping[str, str], fs: FileSystemView | None = None, *,
               filesystem: bool = True) -> list[Problem]:
    """Pre-flight of a whole ``LaunchPlan``: what ``cpt-launch`` runs before submitting and ``cpt-launch check``.
    Includes the job's own spec checks (``launcher.specchecks``): what the job would refuse after the queue wait
    is refused here."""
    from launcher.specchecks import train_spec_problems

    t = plan.jobspec.train
    spec = train_spec_problems(t, t.attention if t.attention in ("te", "sdpa") else None)
    return run_preflight(facts_from_plan(plan, env), fs, filesystem=filesystem) + spec + _wandb_key(plan, env)


def _wandb_key(plan: Any, env: Mapping[str, str]) -> list[Problem]:
    """Online W&B needs WANDB_API_KEY in the job: without it wandb.init fails after the queue wait, unless the
    nodes have a ~/.netrc from `wandb login` (which this cannot see): a warning, not an error."""
    t = plan.jobspec.train
    offline = "WANDB_MODE=offline" in plan.stage("train").script
    if not t.wandb_project or offline or env.get("WANDB_API_KEY"):
        return []
    return [Problem("warning", "env WANDB_API_KEY",
                    f"--wandb-project {t.wandb_project}: W&B runs online on {plan.cluster} (hardware.internet: "
                    "true) but WANDB_API_KEY is not set in this shell; fix: export WANDB_API_KEY (passed to the "
                    "job by name), `wandb login` on the nodes, or hardware.internet: false to log offline")]


def _divs(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


# What each stage's Python must be able to import (top-level packages: finding them imports nothing heavy).
STAGE_MODULES: dict[str, tuple[str, ...]] = {
    "download": ("huggingface_hub",),
    "convert": ("torch", "nemo", "megatron.core", "lightning"),
    "tokenize": ("numpy", "tokenizers"),
    "train": ("torch", "nemo", "megatron.core", "lightning"),
    "export": ("torch", "nemo", "megatron.core", "lightning"),
    "evaluate": ("torch", "transformers"),
}
_PROBE = ("import importlib.util as u, sys\n"
          "def ok(m):\n"
          "    try:\n"
          "        return u.find_spec(m) is not None\n"
          "    except (ImportError, ValueError):\n"
          "        return False\n"
          "print(' '.join(m for m in sys.argv[1:] if not ok(m)))\n")


def check_job_python(plan: Any, env: Mapping[str, str]) -> list[Problem]:
    """Local and torchrun profiles run the stages with the ``python3`` (and ``torchrun``) on the submitting shell's
    PATH, not in a container: probe that interpreter for what the active stages import (~0.1 s, nothing heavy is
    imported). Container and Slurm profiles are not probed: their Python is the image's."""
    import shutil
    import subprocess

    if getattr(plan.profile, "container", None) is not None or plan.profile.executor not in ("local", "torchrun"):
        return []
    path = env.get("PATH", "")
    out: list[Problem] = []
    stages = [s for s in plan.stages if s.skip_reason is None]
    python = stages[0].command[0] if stages and stages[0].command and stages[0].command[0] != "torchrun" \
        else "python3"
    exe = shutil.which(python, path=path)
    if exe is None:
        return [Problem("error", "job python", f"{python}: not found on PATH ({path}); the stages run with it; "
                                               "fix: activate the environment that has NeMo")]
    need = sorted({m for s in stages for m in STAGE_MODULES.get(s.name, ())})
    try:
        r = subprocess.run([exe, "-c", _PROBE, *need], capture_output=True, text=True, timeout=60,
                           env={**env, **plan.env, "PYTHONPATH": plan.env.get("PYTHONPATH", "")
                                + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")})
        missing = r.stdout.split() if r.returncode == 0 else need
    except (OSError, subprocess.TimeoutExpired) as e:
        return [Problem("error", "job python", f"{exe}: does not run ({e})")]
    for s in stages:
        lack = [m for m in STAGE_MODULES.get(s.name, ()) if m in missing]
        if lack:
            out.append(Problem("error", f"job python ({s.name} stage)",
                               f"{exe} cannot import {', '.join(lack)}; the {s.name} stage runs with it (this "
                               "profile has no container: the stages use the python3 on PATH when cpt-launch "
                               "starts); fix: activate the environment with NeMo (pip install -e '.[nemo,data]' or "
                               "the NeMo container's Python), or use a container profile (local-docker)"))
    if any(s.launcher == "torchrun" for s in stages) and shutil.which("torchrun", path=path) is None:
        out.append(Problem("error", "job torchrun", f"torchrun: not found on PATH ({path}); the train stage starts "
                                                    "with it; fix: activate the environment with torch"))
    return out


def check_local_gpus(plan: Any, env: Mapping[str, str]) -> list[Problem]:
    """Profiles that train on this machine (local, torchrun, docker): the GPUs the plan uses must be here, as
    ``nvidia-smi -L`` lists them and ``CUDA_VISIBLE_DEVICES`` narrows them -- found now, not after the CPU stages
    have run for an hour."""
    import shutil
    import subprocess

    if plan.profile.executor not in ("local", "torchrun", "docker"):
        return []
    docker = getattr(plan.profile, "docker", None)
    if plan.profile.executor == "docker" and (docker is None or not docker.runtime):
        return []  # a container without a GPU runtime (CPU test setups): nothing on this host to count
    train = next((s for s in plan.stages if s.name == "train" and s.skip_reason is None), None)
    if train is None:
        return []
    need = plan.profile.hardware.gpus_per_node
    smi = shutil.which("nvidia-smi", path=env.get("PATH", ""))
    if smi is None:
        return [Problem("error", "GPUs", f"the train stage needs {need} NVIDIA GPU(s) on this machine, and "
                                         "nvidia-smi is not on PATH (no NVIDIA driver?); fix: run cpt-launch on the GPU "
                                         "machine, or use a Slurm profile")]
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, env=dict(env))
    except (OSError, subprocess.TimeoutExpired) as e:
        return [Problem("error", "GPUs", f"{smi} -L does not run ({e})")]
    listed = [ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")]
    have = len(listed)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and plan.profile.executor != "docker":  # docker --gpus ignores the host's variable
        have = min(have, len([x for x in cvd.split(",") if x.strip() and not x.strip().startswith("-")]))
    if r.returncode != 0 or have < need:
        seen = f"{len(listed)} listed by nvidia-smi" + (f", CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else "")
        return [Problem("error", "GPUs", f"the train stage needs {need} GPU(s) ({plan.profile.name}: gpus_per_node="
                                         f"{need}) but {have} are usable here ({seen}); fix: free or expose the GPUs, "
                                         "or use a profile with fewer gpus_per_node")]
    return []


_TEST_ONLY_SKIP = ("--output=", "--open-mode=", "--dependency=", "--job-name=")


def check_slurm_request(plan: Any, env: Mapping[str, str]) -> list[Problem]:
    """Ask the cluster itself: ``sbatch --test-only`` with each stage's own ``#SBATCH`` options (the same
    ``launcher.sbatch.sbatch_directives`` the sbatch backend writes; the nemo_run and submitit backends request the
    same resources). Slurm answers without queueing anything; a partition, account, QOS, GRES, node count or time
    limit it would refuse is an error now instead of after the submission. Needs sbatch on PATH (a login node)."""
    import shutil
    import subprocess

    from launcher.errors import ConfigError
    from launcher.sbatch import sbatch_directives

    if plan.profile.executor != "slurm":
        return []
    sbatch = shutil.which("sbatch", path=env.get("PATH", ""))
    if sbatch is None:
        return [Problem("error", "slurm", "sbatch is not on PATH: the profile submits to Slurm, from a login node; "
                                          "fix: run cpt-launch where sbatch works, or write the scripts with "
                                          "--emit-sbatch DIR and submit them there")]
    out: list[Problem] = []
    asked: dict[tuple[str, ...], str] = {}
    for stage in (s for s in plan.stages if s.skip_reason is None):
        try:
            opts = tuple(o for o in sbatch_directives(plan, stage) if not o.startswith(_TEST_ONLY_SKIP))
        except ConfigError as e:
            out += e.problems
            continue
        if opts in asked:  # the CPU stages ask for the same: one answer serves them all
            continue
        try:
            r = subprocess.run([sbatch, "--test-only", *opts], input="#!/bin/sh\ntrue\n", capture_output=True,
                               text=True, timeout=60, env=dict(env))
            refused = r.returncode != 0
            said = " ".join(ln.strip() for ln in r.stderr.splitlines() if ln.strip()) or f"exit {r.returncode}"
        except (OSError, subprocess.TimeoutExpired) as e:
            refused, said = True, str(e)
        asked[opts] = said
        if refused:
            out.append(Problem("error", f"slurm ({stage.name} stage)",
                               f"Slurm refuses {' '.join(opts)}: {said}; fix: the profile's slurm: section "
                               f"({plan.profile.name}: partition, account, qos, gres, time) or --nodes, checked "
                               "against `sinfo -s` and `sacctmgr show assoc user=$USER`"))
    return out
