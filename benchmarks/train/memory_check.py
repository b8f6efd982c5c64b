"""Measured peak GPU memory of training runs against ``launcher.memory.estimate`` for the same configuration.

usage: python benchmarks/train/memory_check.py JOBSPEC.json STEP_STATS.jsonl [JOBSPEC.json STEP_STATS.jsonl ...]

JOBSPEC is what the run trained from (``make_jobspec.py`` or a launcher run dir's ``jobspec.json``); STEP_STATS the
run's ``logs/step_stats.jsonl`` (one JSON object per step with ``max_alloc_gib`` / ``max_reserved_gib``, the
process-wide ``torch.cuda.max_memory_*``). Measured = the largest value over the logged steps. Prints one row per run:
predicted allocated vs measured allocated, predicted allocated + fragmentation vs measured reserved, and the errors
(prediction - measurement, relative to the measurement). Nothing here runs on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from launcher.jobspec import JobSpec  # noqa: E402
from launcher.memory import MemoryConfig, estimate  # noqa: E402
from launcher.models import get_model  # noqa: E402


def check(jobspec: Path, stats: Path) -> dict[str, object]:
    t = JobSpec.from_json(jobspec.read_text()).train
    model = get_model(t.model)
    if t.num_layers:
        model = dataclasses.replace(model, num_layers=t.num_layers)
    cfg = dataclasses.replace(
        MemoryConfig.from_parallelism(t.parallelism, t.seq_length, t.recompute,
                                      strategy="host_master" if t.optimizer_offload else "gpu",
                                      fp8=t.fp8, peft=t.peft),
        grad_reduce_in_fp32=t.grad_reduce_in_fp32)
    est = estimate(model, cfg)
    rows = [json.loads(ln) for ln in stats.read_text().splitlines() if ln.strip().startswith("{")]
    rows = [r for r in rows if r.get("kind", "train") == "train"]  # validation lines carry no memory figures
    if not rows:
        raise SystemExit(f"{stats}: no step lines")
    alloc = max(float(r["max_alloc_gib"]) for r in rows)
    reserved = max(float(r["max_reserved_gib"]) for r in rows)
    pred_res = est.allocated_gib + est.fragmentation_gib
    return {
        "run": t.run_name, "layers": model.num_layers, "tp": t.parallelism.tp, "dp": t.parallelism.dp,
        "seq": t.seq_length, "recompute": t.recompute, "strategy": cfg.strategy, "steps": len(rows),
        "measured_alloc_gib": alloc, "predicted_alloc_gib": round(est.allocated_gib, 2),
        "alloc_error": round((est.allocated_gib - alloc) / alloc, 4),
        "measured_reserved_gib": reserved, "predicted_reserved_gib": round(pred_res, 2),
        "reserved_error": round((pred_res - reserved) / reserved, 4),
        "predicted_total_gib": round(est.total_gib, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", type=Path, help="JOBSPEC.json STEP_STATS.jsonl, repeated")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if len(a.pairs) % 2:
        ap.error("give JOBSPEC.json STEP_STATS.jsonl pairs")
    out = [check(a.pairs[i], a.pairs[i + 1]) for i in range(0, len(a.pairs), 2)]
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'run':10s} {'L':>3s} {'tp':>2s} {'dp':>2s} {'seq':>5s} {'recompute':9s} {'strategy':11s} "
          f"{'alloc meas/pred GiB':>20s} {'err':>7s} {'reserved meas/pred':>19s} {'err':>7s}")
    for r in out:
        print(f"{r['run']!s:10s} {r['layers']!s:>3s} {r['tp']!s:>2s} {r['dp']!s:>2s} {r['seq']!s:>5s} "
              f"{r['recompute']!s:9s} {r['strategy']!s:11s} "
              f"{r['measured_alloc_gib']:>9.2f}/{r['predicted_alloc_gib']:<10.2f} {r['alloc_error']:>+7.1%} "
              f"{r['measured_reserved_gib']:>8.2f}/{r['predicted_reserved_gib']:<10.2f} {r['reserved_error']:>+7.1%}")
    worst = max(max(abs(float(str(r["alloc_error"]))), abs(float(str(r["reserved_error"])))) for r in out)
    print(f"worst |error|: {worst:.1%} over {len(out)} configuration(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
