"""``cpt-launch report RUN``: ``<run>/report.html`` (one self-contained file, the plots embedded as data: URIs) and
the same plots as PNG files in ``<run>/report/``.

It reads only what the run wrote (the step log, manifest.json, plan.json / jobspec.json, ``eval/evaluate.json``,
the TensorBoard events, the checkpoint and log directories), so it works on a run that is still going, one that failed, and one that has
not started training; missing pieces are said in a sentence instead of a plot. Needs matplotlib (the ``report``
extra) and nothing heavier: no NeMo, no torch; the event files are read by ``tfevents`` (no TensorBoard).
"""

from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.manifest import atomic_write
from launcher.progress import (RunFacts, StepLog, TrainProgress, duration, load_json, progress_lines, read_step_log,
                               run_facts, stage_spans, step_log_path, train_progress)
from launcher.report.tfevents import TRAIN_LOSS_TAG, run_scalars, step_rows

EVAL_FILE = Path("eval") / "evaluate.json"
MAX_REPLIES = 5  # sample replies shown side by side


@dataclass(frozen=True)
class TensorBoardFacts:
    """What the report says about the TensorBoard events: where, which files, each tag's last value."""

    directory: Path
    files: list[Path]
    last: dict[str, float]
    curves_from_events: bool  # no step log: the plots were drawn from these events


def eval_path(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """The evaluate stage's JSON: where its manifest record says (an output ending in .json), else the default."""
    outputs = ((manifest.get("stages") or {}).get("evaluate") or {}).get("outputs") or {}
    named = [v for v in outputs.values() if isinstance(v, str) and v.endswith(".json")]
    return Path(named[0]) if named else run_dir / EVAL_FILE


def _plots(log: StepLog, facts: RunFacts, spans: list[dict[str, Any]], now: float) -> dict[str, bytes | None]:
    from launcher.report import plots  # matplotlib: imported only when a report is written

    return {
        "loss_step": plots.loss_plot(log, facts, "step"),
        "loss_tokens": plots.loss_plot(log, facts, "tokens"),
        "lr": plots.lr_plot(log),
        "throughput": plots.throughput_plot(log, facts),
        "memory": plots.memory_plot(log, facts),
        "timeline": plots.timeline_plot(spans, now),
    }


def write_report(run_dir: str | Path, manifest: dict[str, Any], now: float | None = None) -> dict[str, Path]:
    """Write ``<run>/report.html`` and ``<run>/report/<plot>.png``; return their paths ("html", plot names)."""
    now = time.time() if now is None else now
    run_dir = Path(run_dir)
    out_dir = run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = read_step_log(step_log_path(run_dir))
    tb_dir = Path(((manifest.get("stages") or {}).get("train") or {}).get("outputs", {}).get("tensorboard")
                  or run_dir / "train")
    scalars, tb_files = run_scalars(tb_dir)
    from_tb = not log.train and TRAIN_LOSS_TAG in scalars
    if from_tb:  # no step log, but TensorBoard events: the curves from those
        log.train, tb_val = step_rows(scalars)  # type: ignore[assignment]
        log.val = log.val or tb_val  # type: ignore[assignment]
    facts = run_facts(run_dir)
    progress = train_progress(manifest, facts, log, now)
    spans = stage_spans(manifest, log)
    pngs = _plots(log, facts, spans, now)
    written: dict[str, Path] = {}
    for name, data in pngs.items():
        path = out_dir / f"{name}.png"
        if data is None:
            path.unlink(missing_ok=True)  # an old plot of a rerun would contradict the page
            continue
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written[name] = path
    tb = TensorBoardFacts(tb_dir, tb_files, {k: v[-1][2] for k, v in scalars.items()}, from_tb)
    page = render_html(run_dir, manifest, facts, progress, spans, pngs, load_json(eval_path(run_dir, manifest)),
                       now, tb)
    atomic_write(run_dir / "report.html", page)
    written["html"] = run_dir / "report.html"
    return written


# ------------------------------------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,"Noto Sans CJK JP","Hiragino Sans","Yu Gothic",sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}
pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap}.FAILED{color:#b00}.COMPLETED{color:#070}
.reply{white-space:pre-wrap;max-width:480px}.note{color:#666}
"""

PLOT_TITLES = {
    "loss_step": "Train and validation loss against step", "loss_tokens": "Train and validation loss against tokens",
    "lr": "Learning rate", "throughput": "Tokens/s per GPU and MFU", "memory": "Memory against the plan's prediction",
}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _img(name: str, data: bytes | None, missing: str) -> str:
    if data is None:
        return f'<p class="note">{_e(missing)}</p>'
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img id="plot-{name}" alt="{_e(PLOT_TITLES.get(name, name))}" src="data:image/png;base64,{b64}">'


def _table(header: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _plan_section(run_dir: Path, facts: RunFacts) -> str:
    plan = load_json(run_dir / "plan.json")
    if plan is None:
        spec = (load_json(run_dir / "jobspec.json") or {}).get("train", {})
        if not spec:
            return '<p class="note">No plan.json or jobspec.json in the run directory.</p>'
        rows = [["model", spec.get("model")], ["steps", spec.get("max_steps")], ["GBS", (spec.get("parallelism")
                or {}).get("gbs")], ["seq length", spec.get("seq_length")], ["GPUs", facts.gpus]]
        return '<p class="note">From jobspec.json (no plan.json).</p>' + _table(["", ""], rows)
    p, m, t = plan.get("parallelism", {}), plan.get("memory", {}), plan.get("train", {})
    o = t.get("optim", {})
    rows = [
        ["cluster", f"{plan.get('cluster')} ({plan.get('executor')})"],
        ["model", f"{plan.get('model')}, seq {t.get('seq_length')}, {t.get('max_steps')} steps"],
        ["GPUs", f"{plan.get('nodes')} node(s), {plan.get('gpus')} GPU(s)"
                 + (f" {facts.gpu}" if facts.gpu else "")],
        ["parallelism", f"TP{p.get('tp')} PP{p.get('pp')} CP{p.get('cp')} DP{p.get('dp')}, MBS {p.get('mbs')}, "
                        f"GBS {p.get('gbs')} (grad accumulation {p.get('grad_accum')})"],
        ["optimizer", f"AdamW lr {o.get('lr')} -> {o.get('min_lr')} cosine, warmup {o.get('warmup_steps')}"],
        ["memory", f"predicted peak {m.get('predicted_peak_gib')} GiB of {m.get('capacity_gib')} GiB per GPU "
                   f"({m.get('strategy')}; {'fits' if m.get('fits') else 'does not fit'})"
                   + (f"; host {m.get('host_gib')} of {m.get('host_capacity_gib')} GiB"
                      if t.get("optimizer_offload") else "")],
        ["recompute / offload", f"{t.get('recompute')} / {'on' if t.get('optimizer_offload') else 'off'}"],
        ["MFU peak", f"{facts.peak_bf16_tflops:g} TFLOP/s dense bf16 per GPU" if facts.peak_bf16_tflops
                     else "n/a (the profile names no peak for this GPU)"],
    ]
    return _table(["", ""], rows)


def _stage_section(spans: list[dict[str, Any]]) -> str:
    rows = []
    for s in spans:
        ran = (s["ended"] - s["started"]) if s["started"] and s["ended"] else None
        rows.append([s["name"], f'<span class="{_e(s["state"])}">{_e(s["state"])}</span>', _e(s["job_id"] or "-"),
                     _e(_when(s["submitted"])), _e(_when(s["started"])), _e(_when(s["ended"])), _e(duration(ran)),
                     _e(s["reason"] or "")])
    note = ('<p class="note">Times marked by the step log or the stages\' log files where the manifest recorded none.'
            '</p>' if any(s["inferred"] for s in spans) else "")
    return _table(["stage", "state", "job", "submitted", "started", "ended", "ran", "reason"], rows, raw=True) + note


def _num(x: Any, fmt: str = ".3f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _eval_section(ev: dict[str, Any] | None) -> str:
    """Perplexity per validation set (base vs CPT), the share of Japanese replies, and sample replies."""
    if ev is None:
        return f'<p class="note">No {_e(EVAL_FILE)} yet (the evaluate stage has not run or not finished).</p>'
    models = ev.get("models") or {}
    cpt, base = models.get("cpt") or {}, models.get("base") or {}
    ppl: dict[str, dict[str, Any]] = {}
    for name, per in (ev.get("ppl") or {}).items():
        if isinstance(per, dict):
            ppl[name] = dict(per)
    for model, d in (("cpt", cpt), ("base", base)):
        for name, v in (d.get("ppl") or {}).items():
            ppl.setdefault(name, {}).setdefault(model, v)
    rows = []
    for name, per in sorted(ppl.items()):
        c, b = per.get("cpt"), per.get("base")
        change = f"{100 * (c - b) / b:+.1f}%" if isinstance(c, (int, float)) and isinstance(b, (int, float)) and b \
            else "-"
        rows.append([name, _num(b), _num(c), change])
    share = dict(ev.get("japanese_reply_share") or {})
    for model, d in (("cpt", cpt), ("base", base)):
        share.setdefault(model, d.get("japanese_reply_share"))
    parts = ["<h3>Perplexity per set</h3>" + (_table(["set", "base", "CPT", "change"], rows) if rows
                                              else '<p class="note">no perplexities in the file</p>')]
    parts.append(_table(["", "base", "CPT"], [["Japanese reply share", _pct(share.get("base")),
                                               _pct(share.get("cpt"))]]))
    parts.append(_replies(cpt.get("replies") or [], base.get("replies") or []))
    return "\n".join(parts)


def _pct(x: Any) -> str:
    return f"{100 * x:.0f}%" if isinstance(x, (int, float)) else "-"


def _replies(cpt: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    by_prompt = {str(r.get("prompt")): r for r in base if isinstance(r, dict)}
    rows = []
    for r in [r for r in cpt if isinstance(r, dict)][:MAX_REPLIES]:
        b = by_prompt.get(str(r.get("prompt")), {})
        rows.append([f'<div class="reply">{_e(r.get("prompt", ""))}</div>',
                     f'<div class="reply">{_e(b.get("reply", "-"))}</div>',
                     f'<div class="reply">{_e(r.get("reply", ""))}</div>'])
    if not rows:
        return '<p class="note">no sample replies in the file</p>'
    return "<h3>Sample replies</h3>" + _table(["prompt", "base", "CPT"], rows, raw=True)


def _logging_section(run_dir: Path, manifest: dict[str, Any], facts: RunFacts, tbf: TensorBoardFacts) -> str:
    """Where the TensorBoard events and the W&B run are (offline W&B runs wait there for ``wandb sync``)."""
    outputs = ((manifest.get("stages") or {}).get("train") or {}).get("outputs") or {}
    tb = tbf.directory
    last = ", ".join(f"{k} {v:.4g}" for k, v in sorted(tbf.last.items())[:12])
    rows = [["TensorBoard", f"{tb} ({len(tbf.files)} event file(s)); view with: tensorboard --logdir {tb}"
             + (f"; last values: {last}" if last else "")
             + ("; the plots above are drawn from these events (no step log)" if tbf.curves_from_events else "")]]
    if facts.wandb_project:
        wb = Path(outputs.get("wandb") or tb / "wandb")
        offline = facts.env.get("WANDB_MODE") == "offline" or facts.internet is False
        runs = sorted(p.name for p in (wb / "wandb").glob("offline-run-*")) if (wb / "wandb").is_dir() else []
        rows.append(["W&B", f"project {facts.wandb_project}, " + (
            f"offline (the cluster has no internet): run directory {wb / 'wandb'}"
            + (f" ({', '.join(runs)})" if runs else " (none yet)") + f"; upload with: wandb sync {wb / 'wandb'}/"
            "offline-run-*" if offline else f"online; local files under {wb}")])
    else:
        rows.append(["W&B", "not used (no --wandb-project)"])
    rows.append(["step log", str(step_log_path(run_dir))])
    return _table(["", ""], rows)


def render_html(run_dir: Path, manifest: dict[str, Any], facts: RunFacts, progress: TrainProgress,
                spans: list[dict[str, Any]], pngs: dict[str, bytes | None], ev: dict[str, Any] | None,
                now: float, tb: TensorBoardFacts) -> str:
    no_steps = "No train steps logged yet."
    sections = [
        f"<h1>cpt-launch report: run {_e(manifest.get('run'))}</h1>",
        f'<p class="note">{_e(run_dir)}, written {_e(_when(now))}</p>',
        "<h2>Progress</h2><pre>" + _e("\n".join(line.strip() for line in progress_lines(progress))) + "</pre>"
        + (f'<p class="FAILED">train: {_e(progress.state)}: {_e(progress.reason)}</p>' if progress.reason else ""),
        "<h2>Stages</h2>" + _img("timeline", pngs.get("timeline"), "No stage has a time yet.") + _stage_section(spans),
        "<h2>Plan</h2>" + _plan_section(run_dir, facts),
        "<h2>Loss</h2>" + _img("loss_step", pngs.get("loss_step"), no_steps)
        + _img("loss_tokens", pngs.get("loss_tokens"), no_steps),
        "<h2>Learning rate</h2>" + _img("lr", pngs.get("lr"), no_steps),
        "<h2>Throughput and MFU</h2>" + _img("throughput", pngs.get("throughput"), no_steps)
        + '<p class="note">FLOPs by the causal-attention rule (launcher.models.ModelSpec.flops_per_token); MFU = '
          "achieved TFLOP/s per GPU / the GPU's dense bf16 peak.</p>",
        "<h2>Memory</h2>" + _img("memory", pngs.get("memory"), no_steps),
        "<h2>Evaluation (base vs CPT)</h2>" + _eval_section(ev),
        "<h2>Logs</h2>" + _logging_section(run_dir, manifest, facts, tb),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>cpt-launch report {_e(manifest.get('run'))}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
