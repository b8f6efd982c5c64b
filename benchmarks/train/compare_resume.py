"""Did a killed-and-resumed run continue the same loss curve, within the noise of two uninterrupted runs?

usage: python benchmarks/train/compare_resume.py RESUMED.jsonl REFERENCE_A.jsonl [REFERENCE_B.jsonl] [--floor 1e-3]

Each file is a run's step log (``logs/train_steps.jsonl``: one JSON line per step, ``kind`` train/val, with its
``attempt``). RESUMED was killed and restarted with ``--resume``; A and B ran the same spec without interruption.
For every step of RESUMED's last attempt it prints loss, lr and consumed samples next to A's; the noise is the
largest |A - B| loss difference over those same steps. Exit 0 when the largest |RESUMED - A| is within
max(2 x noise, --floor), the lr matches A's at every step and consumed_samples continues (equals A's); 1 otherwise;
2 when nothing was resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def train_steps(p: Path) -> list[dict]:
    rows = []
    for ln in p.read_text().splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            continue  # a line cut short by kill -9
        if r.get("kind", "train") == "train":
            rows.append(r)
    return rows


def by_step(rows: list[dict]) -> dict[int, dict]:
    return {int(r["step"]): r for r in rows}  # the last attempt wins where steps repeat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("resumed", type=Path)
    ap.add_argument("reference_a", type=Path)
    ap.add_argument("reference_b", type=Path, nargs="?")
    ap.add_argument("--floor", type=float, default=1e-3, help="smallest tolerance on |loss difference|")
    ap.add_argument("--json", type=Path, help="also write the comparison as JSON")
    a = ap.parse_args(argv)
    rows = train_steps(a.resumed)
    attempts = sorted({int(r.get("attempt", 1)) for r in rows})
    if len(attempts) < 2:
        print(f"{a.resumed}: one attempt only: nothing was resumed")
        return 2
    last = [r for r in rows if int(r.get("attempt", 1)) == attempts[-1]]
    first = [r for r in rows if int(r.get("attempt", 1)) == attempts[0]]
    ref_a = by_step(train_steps(a.reference_a))
    ref_b = by_step(train_steps(a.reference_b)) if a.reference_b else {}
    print(f"attempt {attempts[0]}: steps {first[0]['step']}..{first[-1]['step']}; attempt {attempts[-1]} (resumed): "
          f"steps {last[0]['step']}..{last[-1]['step']}")
    print(f"{'step':>5s} {'loss resumed':>13s} {'loss A':>9s} {'loss B':>9s} {'resumed-A':>10s} {'B-A':>9s} "
          f"{'lr resumed':>11s} {'lr A':>11s} {'samples':>8s} {'A':>6s}")
    worst, noise, lr_bad, samples_bad, missing = 0.0, 0.0, [], [], []
    table = []
    for r in last:
        s = int(r["step"])
        ra = ref_a.get(s)
        if ra is None:
            missing.append(s)
            continue
        rb = ref_b.get(s)
        d = r["loss"] - ra["loss"]
        dn = (rb["loss"] - ra["loss"]) if rb else None
        worst = max(worst, abs(d))
        if dn is not None:
            noise = max(noise, abs(dn))
        if abs(r["lr"] - ra["lr"]) > 1e-12 + 1e-6 * abs(ra["lr"]):
            lr_bad.append(s)
        if r.get("consumed_samples") != ra.get("consumed_samples"):
            samples_bad.append(s)
        table.append({"step": s, "resumed": r["loss"], "a": ra["loss"], "b": rb["loss"] if rb else None,
                      "lr": r["lr"], "lr_a": ra["lr"], "consumed_samples": r.get("consumed_samples"),
                      "consumed_samples_a": ra.get("consumed_samples")})
        print(f"{s:>5d} {r['loss']:>13.4f} {ra['loss']:>9.4f} {rb['loss'] if rb else float('nan'):>9.4f} {d:>+10.4f} "
              f"{dn if dn is not None else float('nan'):>+9.4f} {r['lr']:>11.4e} {ra['lr']:>11.4e} "
              f"{r.get('consumed_samples')!s:>8s} {ra.get('consumed_samples')!s:>6s}")
    tol = max(2 * noise, a.floor)
    ok = bool(table) and worst <= tol and not lr_bad and not samples_bad and not missing
    print(f"largest |resumed - A| {worst:.5f}; noise max |B - A| {noise:.5f}; tolerance max(2 x noise, {a.floor}) = "
          f"{tol:.5f}; lr {'matches' if not lr_bad else f'DIFFERS at {lr_bad}'}; consumed_samples "
          f"{'continues' if not samples_bad else f'DIFFERS at {samples_bad}'}"
          + (f"; steps missing from A: {missing}" if missing else "") + f" -> {'OK' if ok else 'FAIL'}")
    if a.json:
        a.json.write_text(json.dumps({"ok": ok, "worst": worst, "noise": noise, "tolerance": tol, "lr_bad": lr_bad,
                                      "samples_bad": samples_bad, "steps": table}, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
