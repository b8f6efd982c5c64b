"""Wall time of the 4-node dry run, as a user runs it (a fresh `cpt-launch` process each time).

    python benchmarks/dryrun/bench.py [--repeat 15]

Prints the median and spread of the whole command (interpreter start, imports, profile load, planning,
pure pre-flight checks, rendering, printing) and, measured side by side, the same for `python -c pass` (the
floor any Python CLI pays) and for `import nemo_run` (what the CLI avoids by importing it lazily). Target: < 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        out.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{cmd} failed: {r.stderr.decode()[-500:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "cpt-launch --cluster dgx-h100 --nodes 4 --dry-run": [py, "-m", "launcher.cli", "--cluster", "dgx-h100",
                                                              "--nodes", "4", "--dry-run"],
        "... --json": [py, "-m", "launcher.cli", "--cluster", "dgx-h100", "--nodes", "4", "--dry-run", "--json"],
        "python -c 'import nemo_run' (avoided)": [py, "-c", "import nemo_run"],
    }
    timed(cases["cpt-launch --cluster dgx-h100 --nodes 4 --dry-run"], 2)  # warm the page cache / .pyc
    print(f"{'command':55s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  (n={a.repeat}, {os.cpu_count()} cores)")
    for name, cmd in cases.items():
        n = 3 if "nemo_run" in name else a.repeat
        ts = timed(cmd, n)
        print(f"{name:55s} {statistics.median(ts):9.3f} {min(ts):7.3f} {max(ts):7.3f}")


if __name__ == "__main__":
    main()
