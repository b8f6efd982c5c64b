"""Train progress from what a run wrote: the step log, the manifest, the plan and the checkpoint directory.

Pure functions over files the run directory already holds (no scheduler call, no NeMo, torch or matplotlib), so
``cpt-launch status`` stays light and ``cpt-launch report`` reads the same numbers. Every input is optional: a run
that is queued has no step log, a killed one may end in half a line, an old one has no plan.json.

The step log (``<run>/logs/train_steps.jsonl``, ``recipes.callbacks.StepStats``) holds one JSON object per line:
``{"kind": "train", "attempt", "step", "loss", "lr", "consumed_samples", "step_time_s", "tokens_per_s_per_gpu",
"tflops_per_gpu_causal", "max_alloc_gib", "max_reserved_gib", "host_rss_gib", "host_used_gib", "time"}`` per train
step and ``{"kind": "val", "step", "val_loss"[, "set"]}`` per validation (one line per named set; none = "valid").
It is appended across attempts, so a resumed run repeats the steps after its last checkpoint: the newest attempt's
line of a step wins.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from launcher.resume import checkpoint_step, finished_checkpoints

DEFAULT_VAL_SET = "valid"
RATE_WINDOW = 20  # steps over which the ETA's wall-clock rate is measured (validation and saves included)


@dataclass
class StepLog:
    """The step log's lines, split by kind; ``bad_lines`` counts lines that were not JSON (a kill mid-write)."""

    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def attempts(self) -> list[int]:
        return sorted({int(r.get("attempt", 1)) for r in self.train + self.val})

    def latest_train(self) -> list[dict[str, Any]]:
        """One line per step, the newest attempt's where a resumed run repeated a step, in step order."""
        return _latest_by(self.train, lambda r: r["step"])

    def val_sets(self) -> dict[str, list[dict[str, Any]]]:
        """Validation lines per set name (lines without "set" are the single set "valid"), newest attempt wins."""
        sets: dict[str, list[dict[str, Any]]] = {}
        for r in self.val:
            sets.setdefault(str(r.get("set") or DEFAULT_VAL_SET), []).append(r)
        return {k: _latest_by(v, lambda r: r["step"]) for k, v in sorted(sets.items())}


def _latest_by(rows: list[dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    best: dict[Any, dict[str, Any]] = {}
    for r in rows:  # file order is time order: a later line of the same step is a later attempt
        best[key(r)] = r
    return [best[k] for k in sorted(best)]


def read_step_log(path: str | Path) -> StepLog:
    """Parse the step log; a missing file is an empty log, a line cut short by a kill is counted and skipped."""
    log = StepLog()
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return log
    with f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.bad_lines += 1
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                log.bad_lines += 1
            elif rec.get("kind") == "val":
                log.val.append(rec)
            elif rec.get("kind", "train") == "train":
                log.train.append(rec)
    return log


@dataclass(frozen=True)
class RunFacts:
    """What the plan said about the train stage (plan.json, else jobspec.json); None where neither says."""

    max_steps: int | None = None
    gbs: int | None = None
    seq_length: int | None = None
    gpus: int | None = None
    predicted_peak_gib: float | None = None
    capacity_gib: float | None = None
    host_need_gib: float | None = None
    optimizer_offload: bool = False
    peak_bf16_tflops: float | None = None
    gpu: str | None = None
    internet: bool | None = None
    wandb_project: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int | None:
        return self.gbs * self.seq_length if self.gbs and self.seq_length else None


def load_json(path: str | Path) -> dict[str, Any] | None:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def run_facts(run_dir: str | Path) -> RunFacts:
    """The numbers status and report need from the plan; tolerant of a run directory without plan.json."""
    plan = load_json(Path(run_dir) / "plan.json") or {}
    spec = load_json(Path(run_dir) / "jobspec.json") or {}
    train = plan.get("train") or spec.get("train") or {}
    par = plan.get("parallelism") or train.get("parallelism") or {}
    mem = plan.get("memory") or {}
    hw = plan.get("hardware") or {}
    gpus = plan.get("gpus")
    if gpus is None and train.get("num_nodes") and train.get("gpus_per_node"):
        gpus = int(train["num_nodes"]) * int(train["gpus_per_node"])
    return RunFacts(
        max_steps=train.get("max_steps"), gbs=par.get("gbs"), seq_length=train.get("seq_length"), gpus=gpus,
        predicted_peak_gib=mem.get("predicted_peak_gib"), capacity_gib=mem.get("capacity_gib"),
        host_need_gib=mem.get("host_gib"), optimizer_offload=bool(train.get("optimizer_offload")),
        peak_bf16_tflops=hw.get("peak_bf16_tflops"), gpu=hw.get("gpu"), internet=hw.get("internet"),
        wandb_project=train.get("wandb_project"), env=dict(plan.get("env") or {}),
    )


@dataclass(frozen=True)
class TrainProgress:
    """The train stage at a glance: what ``status`` prints and ``status --json`` carries as ``"train"``."""

    state: str
    step: int | None
    max_steps: int | None
    elapsed_s: float | None  # wall time from the first step's start to the last line (or now, while it runs)
    eta_s: float | None  # remaining steps x the wall-clock rate of the last RATE_WINDOW steps; None when ended
    tokens_per_s_per_gpu: float | None  # median of the current attempt's last RATE_WINDOW steps
    tokens: int | None  # tokens consumed so far (consumed_samples x seq length)
    loss: float | None
    lr: float | None
    val_loss: dict[str, float | None]  # the last validation loss per set
    val_step: int | None
    last_checkpoint: str | None  # name of the newest finished checkpoint (step=N in it), None before the first
    last_checkpoint_step: int | None
    attempts: int
    mfu: float | None  # achieved causal-rule TFLOP/s per GPU / the GPU's peak bf16 (None: the profile has no peak)
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def eta_seconds(train: list[dict[str, Any]], max_steps: int | None, window: int = RATE_WINDOW) -> float | None:
    """Remaining steps x seconds per step, measured by wall clock over the current attempt's last ``window``
    steps, so validation and checkpoint writes inside that window count (step_time_s alone leaves them out)."""
    if not train or not max_steps:
        return None
    cur = [r for r in train if r.get("attempt", 1) == train[-1].get("attempt", 1) and "time" in r]
    last = train[-1]["step"]
    if last >= max_steps:
        return 0.0
    recent = cur[-(window + 1):]
    if len(recent) >= 2 and recent[-1]["step"] > recent[0]["step"]:
        per_step = (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["step"] - recent[0]["step"])
    elif recent and recent[-1].get("step_time_s"):  # one step so far: its own time is all there is
        per_step = float(recent[-1]["step_time_s"])
    else:
        return None
    return max(0.0, per_step * (max_steps - last))


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def last_checkpoint(ckpt_dir: str | Path | None) -> tuple[str | None, int | None]:
    """The newest finished checkpoint in the run's checkpoint directory, by its step=N."""
    if not ckpt_dir:
        return None, None
    try:
        names = finished_checkpoints(os.listdir(ckpt_dir))
    except OSError:
        return None, None
    if not names:
        return None, None
    best = max(names, key=lambda n: checkpoint_step(n) or -1)
    return best, checkpoint_step(best)


def train_progress(manifest: dict[str, Any], facts: RunFacts, log: StepLog, now: float | None = None) -> TrainProgress:
    """Progress of the train stage from the manifest (its JSON), the plan's facts and the step log."""
    rec = (manifest.get("stages") or {}).get("train") or {}
    state = str(rec.get("state", "PENDING"))
    running = state in ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING")
    raw = log.train
    last = raw[-1] if raw else None
    cur = [r for r in raw if last is not None and r.get("attempt", 1) == last.get("attempt", 1)]
    elapsed = None
    if raw and "time" in raw[0]:
        start = raw[0]["time"] - float(raw[0].get("step_time_s") or 0.0)
        end_t = now if (running and now is not None) else max(r.get("time", 0.0) for r in raw + log.val)
        elapsed = max(0.0, end_t - start)
    vals = log.val_sets()
    val_loss = {k: v[-1].get("val_loss") for k, v in vals.items() if v}
    val_step = max((v[-1]["step"] for v in vals.values() if v), default=None)
    tps = _median(cur[-RATE_WINDOW:], "tokens_per_s_per_gpu")
    tflops = _median(cur[-RATE_WINDOW:], "tflops_per_gpu_causal")
    consumed = last.get("consumed_samples") if last else None
    tokens = None
    if last is not None and facts.seq_length:
        tokens = int(consumed * facts.seq_length) if isinstance(consumed, (int, float)) else \
            (last["step"] * facts.tokens_per_step if facts.tokens_per_step else None)
    ckpt, ckpt_step = last_checkpoint((rec.get("outputs") or {}).get("checkpoints"))
    return TrainProgress(
        state=state, step=last["step"] if last else None, max_steps=facts.max_steps, elapsed_s=elapsed,
        eta_s=eta_seconds(raw, facts.max_steps) if running and state != "PENDING" else None,
        tokens_per_s_per_gpu=tps, tokens=tokens, loss=last.get("loss") if last else None,
        lr=last.get("lr") if last else None, val_loss=val_loss, val_step=val_step, last_checkpoint=ckpt,
        last_checkpoint_step=ckpt_step, attempts=max(log.attempts or [0]),
        mfu=(tflops / facts.peak_bf16_tflops) if tflops and facts.peak_bf16_tflops else None,
        reason=str(rec.get("reason") or ""),
    )


def step_log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "logs" / "train_steps.jsonl"


def run_progress(run_dir: str | Path, manifest: dict[str, Any], now: float | None = None) -> TrainProgress:
    """``train_progress`` from the files of one run directory."""
    return train_progress(manifest, run_facts(run_dir), read_step_log(step_log_path(run_dir)),
                          time.time() if now is None else now)


# ------------------------------------------------------------------------------------------------ text


def duration(s: float | None) -> str:
    """1h02m03s / 4m05s / 6s; '-' for unknown."""
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def progress_lines(p: TrainProgress) -> list[str]:
    """The train block of ``cpt-launch status``."""
    step = f"step {p.step if p.step is not None else '-'} of {p.max_steps or '?'}"
    if p.step is not None and p.max_steps:
        step += f" ({100 * p.step / p.max_steps:.0f}%)"
    vals = ", ".join(f"{k} {_num(v, '.4f')}" for k, v in p.val_loss.items()) or "-"
    ckpt = f"{p.last_checkpoint} (step {p.last_checkpoint_step})" if p.last_checkpoint else "none yet"
    out = [
        f"            {step}, elapsed {duration(p.elapsed_s)}, ETA {duration(p.eta_s)}"
        + (f", attempt {p.attempts}" if p.attempts > 1 else ""),
        f"            {_num(p.tokens_per_s_per_gpu, ',.0f')} tokens/s/GPU, MFU "
        + (f"{100 * p.mfu:.1f}% (causal rule)" if p.mfu is not None else "n/a")
        + (f", {p.tokens:,} tokens" if p.tokens is not None else ""),
        f"            loss {_num(p.loss, '.4f')}, lr {_num(p.lr, '.3g')}, val loss {vals}"
        + (f" (step {p.val_step})" if p.val_step is not None else ""),
        f"            last checkpoint {ckpt}",
    ]
    return out


def status_text(manifest: dict[str, Any], progress: TrainProgress | None) -> str:
    """``cpt-launch status``: one line per stage (job id, state, why it ended) and the train block under train."""
    out = [f"run {manifest['run']} ({manifest['cluster']}, {manifest['backend']}) {manifest['run_dir']}"]
    for name, r in manifest["stages"].items():
        reason = r.get("reason") or ""
        out.append(f"  {name:9s} {r.get('job_id') or '-':>10s}  {r['state']}" + (f"  ({reason})" if reason else ""))
        if name == "train" and progress is not None and (progress.step is not None or r["state"] != "PENDING"):
            out += progress_lines(progress)
    return "\n".join(out) + "\n"


TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                             "PREEMPTED", "BOOT_FAIL", "DEADLINE"})


def stage_spans(manifest: dict[str, Any], log: StepLog) -> list[dict[str, Any]]:
    """Per stage: submitted / started / ended (epoch seconds or None) and whether a time was inferred.

    The manifest's own times come first (``submitted``, ``started``, ``ended`` of a stage record). A manifest from
    before they were recorded gets: submitted = the manifest's creation; the train stage's start and end from its
    step log; another stage's end from its log file's modification time and its start from the end of the stages it
    depends on (afterok: it cannot start earlier), where those are known. Inferred times are flagged, so the report
    can say so; what cannot be inferred stays None.
    """
    created = manifest.get("created")
    out: list[dict[str, Any]] = []
    ends: dict[str, float | None] = {}
    for name, r in (manifest.get("stages") or {}).items():
        state = str(r.get("state", "PENDING"))
        sub, start, end = r.get("submitted") or created, r.get("started"), r.get("ended")
        inferred = False
        if start is None and name == "train" and log.train and "time" in log.train[0]:
            start, inferred = log.train[0]["time"] - float(log.train[0].get("step_time_s") or 0.0), True
        if end is None and state in TERMINAL_STATES:
            if name == "train" and log.train:
                end = max(x.get("time", 0.0) for x in log.train + log.val) or None
            elif r.get("log") and os.path.exists(r["log"]):
                end = os.path.getmtime(r["log"])
            inferred = inferred or end is not None
        deps = [e for e in (ends.get(d) for d in r.get("depends_on") or []) if e]
        if start is None and deps and (end is not None or state not in ("PENDING", "CANCELLED")):
            start, inferred = max(deps), True
        ends[name] = end
        out.append({"name": name, "state": state, "job_id": r.get("job_id"), "reason": r.get("reason") or "",
                    "submitted": sub, "started": start, "ended": end, "inferred": inferred})
    return out
