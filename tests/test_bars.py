"""launcher.bars: a tqdm bar on a terminal (a real pseudo-terminal here), plain lines in a log file."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios

from launcher.bars import Bar


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = Bar("convert", 4e9, out, interval=0.0)
    for n in (1e9, 2e9, 4e9):
        bar.update_to(n, "reading tensors")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 4 and lines[0].startswith("convert:  25%|") and "reading tensors" in lines[0]
    assert lines[-1].startswith("convert: 100%|") and "4.00G/4.00G" in lines[-1]


def test_no_line_before_the_interval_but_always_one_at_the_end() -> None:
    out = io.StringIO()
    bar = Bar("tokenize", 100, out, unit="doc", unit_scale=False, interval=3600)
    bar.update_to(50)
    assert out.getvalue() == ""
    bar.close()
    assert out.getvalue().startswith("tokenize:  50%|") and "50/100" in out.getvalue()


def test_a_live_bar_on_a_terminal() -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    with os.fdopen(slave, "w") as tty:
        bar = Bar("export", 10, tty, unit="tensor", unit_scale=False, interval=3600)
        for n in range(1, 11):
            bar.update_to(n)
        bar.close()
        tty.flush()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:
            chunks.append(os.read(master, 65536))
        text = b"".join(chunks).decode()
    os.close(master)
    assert "\r" in text and "export: 100%|" in text and "10/10" in text


def test_phase_lines_say_start_and_duration_and_a_failure() -> None:
    import pytest

    from launcher.bars import phase

    out = io.StringIO()
    with phase("convert: write", out):
        pass
    with pytest.raises(KeyError):
        with phase("export 1/1: read", out):
            raise KeyError("x")
    lines = out.getvalue().splitlines()
    assert lines[0] == "convert: write: started" and lines[1].startswith("convert: write: done in ")
    assert lines[3].startswith("export 1/1: read: failed after ") and lines[3].endswith("(KeyError)")
