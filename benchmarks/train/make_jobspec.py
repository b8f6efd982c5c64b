"""Writes the JobSpec a benchmark run uses (what the launcher's plan would write), from a few flags.

usage: python benchmarks/train/make_jobspec.py OUT.json --root /tmp/cpt --name run8 --layers 8 --gpus 1 \
         [--tp 1] [--pp 1] [--gbs 8] [--seq 8192] [--recompute none] [--offload] [--cap-gib 47] ...
Data and tokenizer are read from ROOT/data (benchmarks/train/prepare_data.py's output); checkpoints and logs go to
ROOT/runs/NAME/. The weights are random (random_init=true): the real ones are gated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from launcher.jobspec import ConvertSpec, ExportSpec, JobSpec, Optim, Parallelism, TrainSpec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--root", default="/tmp/cpt")
    ap.add_argument("--name", required=True)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--gbs", type=int, default=8)
    ap.add_argument("--mbs", type=int, default=1)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ckpt-every", type=int, default=20)
    ap.add_argument("--val-every", type=int, default=None, help="default: --steps (validate once, at the end)")
    ap.add_argument("--val-batches", type=int, default=2)
    ap.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    ap.add_argument("--recompute-layers", type=int, default=None)
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--offload-fraction", type=float, default=1.0)
    ap.add_argument("--bf16-grads", action="store_true")
    ap.add_argument("--sp", action="store_true")
    ap.add_argument("--cap-gib", type=float, default=None)
    ap.add_argument("--sync-ckpt", action="store_true")
    ap.add_argument("--attention", default="auto", choices=["auto", "te", "sdpa"])
    a = ap.parse_args()
    dp = a.gpus // (a.tp * a.pp)
    d = f"{a.root}/data"
    run = f"{a.root}/runs/{a.name}"
    t = TrainSpec(
        model="llama3.1-8b", num_layers=a.layers, num_nodes=1, gpus_per_node=a.gpus,
        parallelism=Parallelism(tp=a.tp, pp=a.pp, cp=1, dp=dp, mbs=a.mbs, gbs=a.gbs, sequence_parallel=a.sp,
                                distributed_optimizer=True),
        optim=Optim(), seq_length=a.seq, max_steps=a.steps, val_check_interval=a.val_every or a.steps,
        limit_val_batches=a.val_batches, ckpt_every_n_steps=a.ckpt_every, ckpt_keep=1,
        ckpt_async_save=not a.sync_ckpt,
        recompute=a.recompute, recompute_num_layers=a.recompute_layers,
        optimizer_offload=a.offload, offload_fraction=a.offload_fraction, grad_reduce_in_fp32=not a.bf16_grads,
        gpu_memory_cap_gib=a.cap_gib, attention=a.attention,
        train_data=[f"{d}/ja_text_document"], valid_data=[f"{d}/ja_valid_text_document"],
        test_data=[f"{d}/ja_test_text_document"], tokenizer_dir=f"{d}/tokenizer",
        base_checkpoint="", random_init=True, checkpoint_dir=f"{run}/checkpoints", log_dir=f"{run}/logs",
        run_name=a.name,
    )
    a.out.write_text(JobSpec(t, ConvertSpec(), ExportSpec()).to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
