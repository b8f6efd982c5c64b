"""Progress for the per-document and per-prompt loops: a tqdm bar on a terminal, plain lines in a job log."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, quiet: bool = False) -> Iterator[T]:
    """Yield ``items``; report on stderr. Not a TTY (a Slurm log): one line per ~10 % and at the end, because a
    redrawn bar fills a log file with carriage returns."""
    if quiet:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, file=sys.stderr)
        return
    t0 = time.monotonic()
    step = max(1, total // 10)
    done = 0
    for it in items:
        yield it
        done += 1
        if done % step == 0 or done == total:
            print(f"[evaluate] {desc}: {done}/{total} ({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
