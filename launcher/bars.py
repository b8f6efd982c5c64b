"""Progress of the long local stages (tokenize, convert, export): a tqdm bar on a terminal, plain lines in a log.

A bar redrawn with carriage returns turns a Slurm log into one endless line, so where the stream is not a terminal
the same text (tqdm's own ``format_meter``) is printed as a line of its own, at most every ``interval`` seconds,
and once at the end. tqdm is imported when a bar is made, not when this module is.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator, TextIO


def is_tty(stream: Any) -> bool:
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


class Bar:
    """``update_to(n, postfix)`` with the absolute amount done; ``close()`` once at the end."""

    def __init__(self, desc: str, total: float | None, stream: TextIO | None, *, unit: str = "B",
                 unit_scale: bool = True, interval: float = 10.0) -> None:
        self.desc, self.total, self.stream, self.unit, self.unit_scale = desc, total, stream, unit, unit_scale
        self.interval = interval
        self.t0 = time.monotonic()
        self.last_line = self.t0
        self.n = 0.0
        self.postfix = ""
        self._bar: Any = None
        if is_tty(stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=stream,
                             dynamic_ncols=True, mininterval=0.5, leave=True)

    def update_to(self, n: float, postfix: str = "") -> None:
        self.n, self.postfix = n, postfix
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n - self._bar.n)
        elif self.stream is not None and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        from tqdm import tqdm

        self.last_line = time.monotonic()
        text = tqdm.format_meter(self.n, self.total, self.last_line - self.t0, prefix=self.desc, unit=self.unit,
                                 unit_scale=self.unit_scale, postfix=self.postfix or None, ncols=100)
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.stream is not None:
            self._line()  # the final figures, whatever the interval


@contextlib.contextmanager
def phase(what: str, stream: TextIO | None = None) -> Iterator[None]:
    """A line when a long step of a stage starts and one with its duration when it ends (or fails): work that runs
    inside a library call (NeMo's checkpoint import/export) and gives no counts a bar could show."""
    out = sys.stderr if stream is None else stream
    t0 = time.monotonic()
    print(f"{what}: started", file=out, flush=True)
    try:
        yield
    except BaseException as e:
        print(f"{what}: failed after {time.monotonic() - t0:.1f} s ({type(e).__name__})", file=out, flush=True)
        raise
    print(f"{what}: done in {time.monotonic() - t0:.1f} s", file=out, flush=True)
