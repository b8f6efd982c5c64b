"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas (headless: no display, no pyplot
state shared between figures).

Each function takes plain data (the step log's rows, the plan's facts) and returns PNG bytes, or None when there is
nothing to draw yet (a queued run has no steps), so the page shows a sentence instead of an empty frame.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from launcher.progress import RunFacts, StepLog

STATE_COLOURS = {"queued": "#bdbdbd", "running": "#1f77b4", "COMPLETED": "#2ca02c", "FAILED": "#d62728",
                 "CANCELLED": "#ff7f0e", "TIMEOUT": "#d62728", "OUT_OF_MEMORY": "#d62728", "NODE_FAIL": "#d62728"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _series(rows: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[y])) for r in rows if isinstance(r.get(x), (int, float))
           and isinstance(r.get(y), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _attempt_marks(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    """A dashed line where a resumed attempt's first step is: the steps after it replace the killed attempt's."""
    prev = None
    for r in rows:
        a = r.get("attempt", 1)
        if prev is not None and a != prev:
            ax.axvline(r["step"], color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"attempt {a}", (r["step"], 1), xycoords=("data", "axes fraction"), fontsize=8,
                        ha="left", va="top", color="grey")
        prev = a


def _with_tokens(rows: list[dict[str, Any]], facts: RunFacts) -> list[dict[str, Any]]:
    """Rows with "tokens": consumed_samples x seq length (step x GBS x seq where the sampler did not say)."""
    out = []
    for r in rows:
        cs = r.get("consumed_samples")
        if isinstance(cs, (int, float)) and facts.seq_length:
            tokens: float | None = cs * facts.seq_length
        elif facts.tokens_per_step:
            tokens = r["step"] * facts.tokens_per_step
        else:
            tokens = None
        out.append({**r, "tokens": tokens})
    return out


def loss_plot(log: StepLog, facts: RunFacts, against: str) -> bytes | None:
    """Train loss and one validation curve per set, against "step" or "tokens"."""
    train = _with_tokens(log.latest_train(), facts)
    sets = log.val_sets()
    if not train and not any(sets.values()):
        return None
    steps_to_tokens = {r["step"]: r["tokens"] for r in train}
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    x, y = _series(train, against, "loss")
    ax.plot(x, y, label="train loss", color="#1f77b4", linewidth=1.5)
    for i, (name, rows) in enumerate(sets.items()):
        if against == "tokens":  # a validation line says its step: its tokens are those of that train step
            rows = [{**r, "tokens": steps_to_tokens.get(r["step"])} for r in rows]
        vx, vy = _series(rows, against, "val_loss")
        ax.plot(vx, vy, marker="o", label=f"validation loss ({name})", color=f"C{i + 1}", linewidth=1.5)
    if against == "step":
        _attempt_marks(ax, log.train)
    ax.set_xlabel("step" if against == "step" else "tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"Loss against {'step' if against == 'step' else 'tokens'}")
    return _png(fig)


def lr_plot(log: StepLog) -> bytes | None:
    x, y = _series(log.latest_train(), "step", "lr")
    if not x:
        return None
    fig = Figure(figsize=(8, 3))
    ax = fig.add_subplot()
    ax.plot(x, y, color="#9467bd", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.set_title("Learning rate")
    return _png(fig)


def throughput_plot(log: StepLog, facts: RunFacts) -> bytes | None:
    """tokens/s/GPU, and MFU (causal FLOP rule / the GPU's dense bf16 peak) where the plan names the peak."""
    rows = log.latest_train()
    x, y = _series(rows, "step", "tokens_per_s_per_gpu")
    if not x:
        return None
    fig = Figure(figsize=(8, 5.5 if facts.peak_bf16_tflops else 3))
    ax = fig.add_subplot(2 if facts.peak_bf16_tflops else 1, 1, 1)
    ax.plot(x, y, color="#17becf", linewidth=1.5)
    ax.set_ylabel("tokens/s per GPU")
    ax.grid(alpha=0.3)
    ax.set_title("Throughput")
    _attempt_marks(ax, log.train)
    if facts.peak_bf16_tflops:
        mx, tf = _series(rows, "step", "tflops_per_gpu_causal")
        ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
        ax2.plot(mx, [100 * t / facts.peak_bf16_tflops for t in tf], color="#8c564b", linewidth=1.5)
        ax2.set_ylabel(f"MFU % (of {facts.peak_bf16_tflops:g})")
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return _png(fig)


def memory_plot(log: StepLog, facts: RunFacts) -> bytes | None:
    """Peak GPU memory per step against the plan's prediction and the capacity; host memory when offloaded."""
    rows = log.latest_train()
    x, alloc = _series(rows, "step", "max_alloc_gib")
    if not x:
        return None
    host = facts.optimizer_offload
    fig = Figure(figsize=(8, 6 if host else 3.5))
    ax = fig.add_subplot(2 if host else 1, 1, 1)
    ax.plot(x, alloc, label="max allocated", color="#1f77b4", linewidth=1.5)
    rx, res = _series(rows, "step", "max_reserved_gib")
    ax.plot(rx, res, label="max reserved", color="#ff7f0e", linewidth=1.5)
    if facts.predicted_peak_gib is not None:
        ax.axhline(facts.predicted_peak_gib, color="#d62728", linestyle="--",
                   label=f"plan: predicted peak {facts.predicted_peak_gib:g} GiB")
    if facts.capacity_gib is not None:
        ax.axhline(facts.capacity_gib, color="black", linestyle=":", label=f"capacity {facts.capacity_gib:g} GiB")
    ax.set_ylabel("GPU memory (GiB)")
    ax.set_title("GPU memory against the plan")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if host:
        ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
        hx, rss = _series(rows, "step", "host_rss_gib")
        ax2.plot(hx, rss, label="trainer RSS (rank 0)", color="#2ca02c")
        ux, used = _series(rows, "step", "host_used_gib")
        ax2.plot(ux, used, label="machine used", color="#7f7f7f")
        if facts.host_need_gib is not None:
            ax2.axhline(facts.host_need_gib, color="#d62728", linestyle="--",
                        label=f"plan: host need {facts.host_need_gib:g} GiB")
        ax2.set_ylabel("host memory (GiB)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.axes[-1].set_xlabel("step")
    return _png(fig)


def timeline_plot(spans: list[dict[str, Any]], now: float) -> bytes | None:
    """One row per stage: queued (grey), running (blue), then its end state; a stage that ended at a time nobody
    recorded gets no bar (its label says the state) rather than one that runs on to now."""
    from matplotlib.patches import Patch

    from launcher.progress import TERMINAL_STATES

    known = [s for s in spans if s.get("submitted") or s.get("started")]
    if not known:
        return None
    t0 = min(t for s in known for t in (s.get("submitted"), s.get("started")) if t)
    fig = Figure(figsize=(8, 0.55 * len(spans) + 1.6))
    ax = fig.add_subplot()
    for i, s in enumerate(reversed(spans)):
        sub, start, end = s.get("submitted"), s.get("started"), s.get("ended")
        live = s["state"] not in TERMINAL_STATES
        q_end = start or end or (now if live else None)
        if sub and q_end and q_end > sub:  # a resumed run's train stage began (attempt 1) before this manifest
            ax.barh(i, (q_end - sub) / 60, left=(sub - t0) / 60, color=STATE_COLOURS["queued"], height=0.5)
        r_end = end or (now if live else None)
        if start and r_end:
            colour = STATE_COLOURS.get(s["state"], STATE_COLOURS["running"]) if end else STATE_COLOURS["running"]
            ax.barh(i, (r_end - start) / 60, left=(start - t0) / 60, color=colour, height=0.5)
    ax.set_yticks(range(len(spans)), [f"{s['name']} ({s['state']})" for s in reversed(spans)])
    ax.set_xlabel("minutes since the first submission")
    ax.set_title("Stage timeline")
    ax.legend(handles=[Patch(color=STATE_COLOURS[k], label=k.lower()) for k in
                       ("queued", "running", "COMPLETED", "FAILED", "CANCELLED")], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))  # outside the axes: never over a bar
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
