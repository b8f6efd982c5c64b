"""A small Lightning callback that writes one JSON line per training step: loss, time, throughput, memory.

The benchmark figures in ``benchmarks/train/`` are read from these lines (``step_stats.jsonl`` in the log dir and
stderr, prefixed ``STEP``). Throughput uses the causal FLOP rule of ``launcher.models.ModelSpec.flops_per_token``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

H100_H200_DENSE_BF16_TFLOPS = 989.0  # vendor peak used for MFU (same chip for H100 SXM and H200)


class StepStats(Callback):
    def __init__(self, tokens_per_step: int, flops_per_token: float, world_size: int, log_path: str | None = None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.log_path = log_path
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        torch.cuda.synchronize()
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        loss = None
        if isinstance(outputs, dict):
            outputs = outputs.get("loss")
        if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
            loss = float(outputs.detach().float())
        if loss is None:
            v = trainer.callback_metrics.get("reduced_train_loss")
            loss = float(v) if v is not None else None
        lr = None
        try:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        except Exception:
            pass
        tps_gpu = self.tokens_per_step / dt / self.world_size
        tflops = tps_gpu * self.flops_per_token / 1e12
        rec = {
            "step": int(trainer.global_step),
            "loss": loss,
            "lr": lr,
            "step_time_s": round(dt, 4),
            "tokens_per_s_per_gpu": round(tps_gpu, 1),
            "tflops_per_gpu_causal": round(tflops, 1),
            "mfu_causal_vs_989": round(tflops / H100_H200_DENSE_BF16_TFLOPS, 4),
            "max_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "rank": int(os.environ.get("RANK", "0")),
        }
        if rec["rank"] == 0:
            print("STEP " + json.dumps(rec), file=sys.stderr, flush=True)
            if self.log_path:
                os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
