"""Lightning callbacks of the train recipe: the step log, and checkpoints that only the flags write.

``StepStats`` writes one JSON line per training step (loss, lr, consumed samples, time, throughput, GPU and host
memory) and one per validation (``"kind": "val"``) to the run's step log, and ``STEP ...`` lines to stderr. Every
line carries its ``attempt``: the log is appended to across restarts (``--resume``, a Slurm requeue), so one file
holds the whole run. Throughput uses the causal FLOP rule of ``launcher.models.ModelSpec.flops_per_token``.

``FlagCheckpoint`` is NeMo's ``ModelCheckpoint`` with one change of rule: a checkpoint is written every
``every_n_train_steps`` and at the end of training, never because validation ran. NeMo's (Lightning's)
``on_validation_end`` saves a ``-last`` checkpoint whenever validation runs at a step that has none; with
validation every 15 and checkpoints every 20 that was three full 36.5 GiB checkpoints by step 30 on the H200 and
a full disk.
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


def _host_gib() -> tuple[float | None, float | None]:
    """(this process's resident memory, the machine's used memory: MemTotal - MemAvailable), GiB."""
    rss = used = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 2**20
        mem = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                mem[k] = int(v.split()[0])
        used = (mem["MemTotal"] - mem["MemAvailable"]) / 2**20
    except (OSError, KeyError, ValueError):
        pass
    return (round(rss, 2) if rss is not None else None, round(used, 2) if used is not None else None)


def previous_attempts(log_path: str | None) -> int:
    """The highest ``attempt`` already in the step log (0 for a new one)."""
    if not log_path or not os.path.exists(log_path):
        return 0
    best = 0
    with open(log_path) as f:
        for line in f:
            try:
                best = max(best, int(json.loads(line).get("attempt", 1)))
            except (ValueError, AttributeError, TypeError):
                continue  # a line cut short by a kill -9: the next attempt appends after it
    return best


def complete_current_batch(checkpoint: dict[str, Any]) -> None:
    """Record the batch a checkpoint is written in as completed.

    ``every_n_train_steps`` saves in ``on_train_batch_end``, where Lightning (2.4) has counted the batch ``ready`` and
    ``processed`` but not yet ``completed``. On restart it rewinds ``ready`` to ``completed`` while the step and
    the data position (``consumed_samples``) are those after the batch: every later ``val_check_interval`` decision
    comes one batch late. Seen on the H200 and replayed with a plain Lightning Trainer: validation every 10 ran at
    steps 11, 21, 31 after resuming from step 10, and the last one (step 40) never ran.
    """
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.batch_progress")
    if not progress:
        return
    behind = progress["current"]["ready"] - progress["current"]["completed"]
    if behind <= 0:
        return
    for part in ("current", "total"):
        progress[part]["completed"] = progress[part]["ready"]
    state = loops.get("epoch_loop.state_dict", {})
    if "_batches_that_stepped" in state:
        state["_batches_that_stepped"] += behind


def _sync_cuda() -> None:
    if torch.cuda.is_available():  # the CPU replays in the tests have no CUDA to wait for
        torch.cuda.synchronize()


class StepStats(Callback):
    """The step log. ``val_sets``: the validation sets' names in dataloader order (recipes.data); each validation
    writes one ``{"kind": "val", "step", "set", "val_loss"}`` line per set, and with several sets ``val_loss``
    (the name the checkpoint monitor and the progress bar read) is made the first set's loss."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, world_size: int, log_path: str | None = None,
                 val_sets: list[str] | None = None):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.log_path = log_path
        self.val_sets = list(val_sets or ["valid"])
        self.rank = int(os.environ.get("RANK", "0"))
        self.attempt = previous_attempts(log_path) + 1
        self._t0: float | None = None

    def _write(self, rec: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        rec = {"kind": rec.pop("kind"), "attempt": self.attempt, **rec, "time": round(time.time(), 3)}
        print("STEP " + json.dumps(rec), file=sys.stderr, flush=True)
        if self.log_path:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        _sync_cuda()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync_cuda()
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
        tps_gpu = self.tokens_per_step / dt / self.world_size
        tflops = tps_gpu * self.flops_per_token / 1e12
        rss, used = _host_gib()
        self._write({
            "kind": "train",
            "step": int(trainer.global_step),
            "loss": loss,
            "lr": _lr(trainer),
            "consumed_samples": _consumed_samples(trainer),
            "step_time_s": round(dt, 4),
            "tokens_per_s_per_gpu": round(tps_gpu, 1),
            "tflops_per_gpu_causal": round(tflops, 1),
            "mfu_causal_vs_989": round(tflops / H100_H200_DENSE_BF16_TFLOPS, 4),
            "max_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available()
            else None,
            "host_rss_gib": rss,
            "host_used_gib": used,
            "rank": self.rank,
        })

    # Several validation sets: the loss of each step is taken from the step's own output and filed under the
    # dataloader of the batches it consumed (``dataloader_idx`` of on_validation_batch_end, read after the step).
    # Lightning's own per-dataloader metrics (``val_loss/dataloader_idx_<i>``) are not used: with the data iterator
    # NeMo hands the step, Lightning files a step under the dataloader of the batch fetched *before* it, so the
    # first step of set i+1 counts as set i's (the CPU replay in tests/test_valid_sets.py shows it).
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._steps: dict[int, list[torch.Tensor]] = {}
        self._means: dict[int, float] = {}

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if len(self.val_sets) > 1:
            # every rank records every step (a stage without the loss as 0): the pipeline sum needs all ranks
            loss = outputs.detach().float().reshape(()).cpu() if isinstance(outputs, torch.Tensor) else torch.zeros(())
            self._steps.setdefault(dataloader_idx, []).append(loss)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if len(self.val_sets) < 2 or not self._steps:
            return
        means = torch.stack([torch.stack(self._steps[i]).mean() if i in self._steps else torch.tensor(float("nan"))
                             for i in range(len(self.val_sets))])
        means = _sum_over_pipeline(means)
        self._means = {i: float(v) for i, v in enumerate(means) if i in self._steps}
        for i, name in enumerate(self.val_sets):
            if i in self._means:
                pl_module.log(f"val_loss_{name}", self._means[i], on_epoch=True, batch_size=1)
        if 0 in self._means:  # val_loss (checkpoint monitor, progress bar) is the first set's loss
            pl_module.log("val_loss", self._means[0], on_epoch=True, batch_size=1)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        if len(self.val_sets) > 1:
            values: list[Any] = [self._means.get(i) for i in range(len(self.val_sets))]
        else:
            values = [trainer.callback_metrics.get("val_loss")]
        for name, v in zip(self.val_sets, values):
            self._write({"kind": "val", "step": int(trainer.global_step), "set": name,
                         "val_loss": float(v) if v is not None else None})


def _sum_over_pipeline(t: torch.Tensor) -> torch.Tensor:
    """NeMo's validation loss is on the last pipeline stage and 0 on the others (MegatronStrategy.validation_step
    multiplies by pp after a mean over the stages): a sum over the pipeline group gives every rank the loss."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() <= 1:
        return t
    t = t.to(torch.cuda.current_device()) if torch.cuda.is_available() else t
    torch.distributed.all_reduce(t, group=parallel_state.get_pipeline_model_parallel_group())
    return t.cpu()


def _lr(trainer: Any) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _consumed_samples(trainer: Any) -> int | None:
    """Samples consumed so far, as NeMo names checkpoints by it (its data sampler counts from the resumed step)."""
    sampler: Any = getattr(getattr(trainer, "datamodule", None), "data_sampler", None)
    try:
        return int(sampler.compute_consumed_samples(trainer.global_step - sampler.init_global_step))
    except (AttributeError, TypeError, ValueError):
        return None


from nemo.lightning.pytorch.callbacks.model_checkpoint import ModelCheckpoint  # noqa: E402 (NeMo: job side only)


class FlagCheckpoint(ModelCheckpoint):
    """NeMo's ModelCheckpoint, saving only every ``every_n_train_steps`` and once at the end of training.

    Lightning's ``on_validation_end`` calls ``_save_last_checkpoint`` whenever validation runs at a step with no
    checkpoint; NeMo's ``_link_checkpoint`` then finds no checkpoint of that step to link to and writes a full
    ``-last`` copy. Validation here writes nothing. The end of training, which NeMo only covered through that
    validation save (its ``on_train_end`` saves when ``global_step % val_check_interval != 0``), is saved here:
    a top-k checkpoint of the last step (so ``save_top_k`` counts it and removes the oldest) and its ``-last`` link.
    A checkpoint written at the end of a batch records that batch as completed (``complete_current_batch``).
    """

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        return

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        complete_current_batch(checkpoint)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step \
                and trainer.global_step > 0:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)
