"""Did a killed-and-resumed run continue the same loss curve?

usage: python benchmarks/train/compare_resume.py REFERENCE.jsonl RESUMED.jsonl [--tol 0.02]

REFERENCE: ``step_stats.jsonl`` of an uninterrupted run of the same JobSpec (same seed, data order, schedule).
RESUMED: the ``step_stats.jsonl`` of the run that was killed and restarted with the same command; it holds the first
attempt's steps, then the resumed attempt's (the step number drops where the restart began: the steps after the last
checkpoint run again). Prints, for the resumed attempt, each step's loss and lr next to the reference and the
largest absolute loss difference; exit 1 if it exceeds --tol or the lr schedule differs, 2 if nothing was resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(p: Path) -> list[dict[str, float]]:
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip().startswith("{")]


def attempts(rows: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    """Split a step log into attempts: a new attempt starts where the step number does not increase."""
    out: list[list[dict[str, float]]] = []
    for r in rows:
        if not out or r["step"] <= out[-1][-1]["step"]:
            out.append([])
        out[-1].append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("resumed", type=Path)
    ap.add_argument("--tol", type=float, default=0.02, help="largest allowed |loss difference| (default 0.02)")
    a = ap.parse_args()
    ref = {int(r["step"]): r for r in load(a.reference)}
    parts = attempts(load(a.resumed))
    if len(parts) < 2:
        print(f"{a.resumed}: one attempt only (steps {parts[0][0]['step'] if parts else '-'}.."
              f"{parts[0][-1]['step'] if parts else '-'}): nothing was resumed")
        return 2
    first, resumed = parts[0], parts[-1]
    print(f"first attempt: steps {first[0]['step']}..{first[-1]['step']}; resumed attempt: steps "
          f"{resumed[0]['step']}..{resumed[-1]['step']} ({len(parts)} attempts)")
    worst, lr_bad = 0.0, []
    print(f"{'step':>5s} {'loss resumed':>13s} {'loss reference':>15s} {'diff':>9s} {'lr resumed':>11s} {'lr ref':>11s}")
    for r in resumed:
        s = int(r["step"])
        if s not in ref:
            print(f"{s:>5d} {r['loss']:>13.4f} {'-':>15s}")
            continue
        d = r["loss"] - ref[s]["loss"]
        worst = max(worst, abs(d))
        if abs(r["lr"] - ref[s]["lr"]) > 1e-12 + 1e-6 * abs(ref[s]["lr"]):
            lr_bad.append(s)
        print(f"{s:>5d} {r['loss']:>13.4f} {ref[s]['loss']:>15.4f} {d:>+9.4f} {r['lr']:>11.4e} {ref[s]['lr']:>11.4e}")
    print(f"largest |loss difference| {worst:.4f} (tolerance {a.tol}); lr schedule "
          + ("matches" if not lr_bad else f"DIFFERS at steps {lr_bad}"))
    return 0 if worst <= a.tol and not lr_bad else 1


if __name__ == "__main__":
    sys.exit(main())
