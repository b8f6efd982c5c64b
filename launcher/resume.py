"""Which weights a train stage starts from: the run's own latest checkpoint, the converted base model, or nothing.

A pure function of the checkpoint directory's listing, so the launcher (planning a requeue), the tests and the
job itself agree without importing NeMo. It mirrors what ``nemo.lightning.AutoResume`` (nemo_toolkit 2.7.3,
``_find_trainer_ckpt_path``) does with ``resume_if_exists=True, resume_ignore_no_checkpoint=True`` and a
``restore_config`` pointing at the base checkpoint:

1. a checkpoint directory whose name ends in ``end`` and is finished -> training already completed: refuse
   (NeMo raises unless ``resume_past_end``; re-running a finished run is a mistake, not a resume);
2. else the newest finished ``*last`` checkpoint -> resume from it (optimizer, step, data position);
3. else the base checkpoint (``restore_config``) -> weights only, step 0;
4. else random init, only where the spec says so (tests, benchmarks).

A checkpoint ``X`` is unfinished while a marker ``X-unfinished`` sits beside it (NeMo's ModelCheckpoint writes the
marker before saving and removes it after). If every ``*last`` checkpoint is unfinished NeMo refuses to start
rather than silently restarting from the base model; so do we.

Where NeMo picks among several ``*last`` checkpoints by modification time, this picks the highest ``step=N`` in
the name (the same one for checkpoints written by one run; names are all a listing carries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal

UNFINISHED_SUFFIX = "-unfinished"
_STEP = re.compile(r"(?:^|[-_])step=(\d+)")

Source = Literal["own_checkpoint", "base_checkpoint", "random_init", "refuse"]


@dataclass(frozen=True)
class ResumeDecision:
    """Where training starts. ``path`` is a checkpoint directory name (own) or the base checkpoint path."""

    source: Source
    path: str | None
    step: int | None  # the global step the run continues from (own checkpoints only)
    reason: str

    @property
    def ok(self) -> bool:
        return self.source != "refuse"


def checkpoint_step(name: str) -> int | None:
    """The ``step=N`` in a NeMo checkpoint name (``cpt--step=19-consumed_samples=160.0-last`` -> 19)."""
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def _strip(name: str) -> str:
    name = name.rstrip("/")
    for suffix in (".ckpt", ".nemo"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def decide_resume(
    checkpoint_dir_entries: Iterable[str],
    base_checkpoint: str | None,
    *,
    allow_random_init: bool = False,
) -> ResumeDecision:
    """Decide where a train stage starts.

    ``checkpoint_dir_entries``: the names in the run's checkpoint directory (``os.listdir``; an absent directory is
    an empty listing). ``base_checkpoint``: the converted base model ("" or None: none). ``allow_random_init``: the
    spec says training from random weights is intended (GPU benchmarks); otherwise a missing base is refused.
    """
    names = [_strip(n) for n in checkpoint_dir_entries]
    markers = {n[: -len(UNFINISHED_SUFFIX)] for n in names if n.endswith(UNFINISHED_SUFFIX)}
    ckpts = [n for n in names if not n.endswith(UNFINISHED_SUFFIX)]

    ends = [n for n in ckpts if n.endswith("end")]
    finished_ends = [n for n in ends if n not in markers]
    if ends and not finished_ends:
        return ResumeDecision("refuse", ends[0], checkpoint_step(ends[0]),
                              f"end checkpoint {ends[0]} is unfinished; remove it by hand (NeMo refuses too)")
    if finished_ends:
        return ResumeDecision("refuse", finished_ends[0], checkpoint_step(finished_ends[0]),
                              f"{finished_ends[0]} says this run already completed; start a new run directory")

    lasts = [n for n in ckpts if n.endswith("last")]
    finished = [n for n in lasts if n not in markers]
    if lasts and not finished:
        return ResumeDecision("refuse", None, None,
                              f"every -last checkpoint is unfinished ({', '.join(sorted(lasts))}); NeMo refuses "
                              "to resume rather than restart from the base model; remove the unfinished one by hand")
    if finished:
        best = max(finished, key=lambda n: (checkpoint_step(n) if checkpoint_step(n) is not None else -1, n))
        step = checkpoint_step(best)
        return ResumeDecision("own_checkpoint", best, step,
                              f"resuming from the run's own checkpoint {best} (step {step})")

    if base_checkpoint:
        return ResumeDecision("base_checkpoint", base_checkpoint, None,
                              f"no checkpoint of this run yet: restoring base weights from {base_checkpoint}")
    if allow_random_init:
        return ResumeDecision("random_init", None, None,
                              "no checkpoint of this run and NO BASE CHECKPOINT: random init (tests/benchmarks only)")
    return ResumeDecision("refuse", None, None,
                          "no checkpoint of this run and no base_checkpoint; set base_checkpoint to the convert "
                          "stage's output, or random_init=true for a benchmark")


def finished_checkpoints(checkpoint_dir_entries: Iterable[str]) -> list[str]:
    """The finished step checkpoints in a listing: no ``-unfinished`` marker, and not the ``-last`` links (a link
    to a checkpoint takes no space of its own)."""
    names = [_strip(n) for n in checkpoint_dir_entries]
    markers = {n[: -len(UNFINISHED_SUFFIX)] for n in names if n.endswith(UNFINISHED_SUFFIX)}
    return [n for n in names if checkpoint_step(n) is not None and not n.endswith(UNFINISHED_SUFFIX)
            and not n.endswith("last") and n not in markers]
