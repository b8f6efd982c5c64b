"""How big one training checkpoint is, and how many of them the checkpoint directory must hold at once.

Pure arithmetic over the model's shape: the launcher never imports NeMo to size a checkpoint.

A NeMo 2 ``torch_dist`` checkpoint with optimizer state holds, per parameter, the bf16 weight (2 B), the fp32 master
copy (4 B) and Adam's two fp32 moments (8 B): 14 B/param, whatever the parallelism (each rank writes its shard; the
total is the model's). Measured on the H200 (``../shared/REFERENCE.md`` section 7): 36.5 GiB for 8 layers of the 8B
shape, 25.1 GiB for 4 layers; this rule gives 36.5 and 25.0. With tied embeddings (Llama-3.2-1B) the checkpoint
holds one more fp32 copy of the embedding matrix: 7.6 GiB measured for 4 layers of the 3.2-1B shape
(``benchmarks/train/results/d2``), 6.7 by 14 B/param, 7.6 with the copy. A LoRA checkpoint holds the adapters only.

At the peak a run holds ``keep`` finished checkpoints and one more being written (the newest is saved before the
oldest is removed, and an async save overlaps the next steps): ``keep + 1`` of them must fit.
"""

from __future__ import annotations

import os

from launcher.memory import lora_params_per_layer
from launcher.models import ModelSpec

BYTES_PER_PARAM_WITH_OPTIMIZER = 14  # bf16 weight + fp32 master + Adam m, v
LORA_RANK = 32  # NeMo's LoRA default (recipes.cpt.LORA_DIM)
# metadata, common state (param groups, scheduler, RNG), context/ (tokenizer files): measured well under 0.1 GiB
OVERHEAD_BYTES = 64 * 2**20
DEFAULT_KEEP = 2


def checkpoint_bytes(model: ModelSpec, peft: str = "none") -> int:
    """Bytes of one checkpoint of ``model`` (its num_layers as given) with optimizer state."""
    if peft == "lora":
        params = lora_params_per_layer(model, LORA_RANK) * model.num_layers
    else:
        params = model.num_params()
    tied_copy = 4 * model.vocab_size * model.hidden_size if model.tied_embeddings and peft != "lora" else 0
    return params * BYTES_PER_PARAM_WITH_OPTIMIZER + tied_copy + OVERHEAD_BYTES


def bytes_needed(one: int, keep: int, finished_already: int = 0) -> int:
    """Free space the run still needs: ``keep + 1`` checkpoints at the peak, less the ones already on disk (a
    resumed run's own checkpoints count towards its ``keep``; the newest of them is removed last)."""
    return max(0, keep + 1 - finished_already) * one


def keep_that_fits(one: int, free: int, finished_already: int = 0, default: int = DEFAULT_KEEP) -> int:
    """``--ckpt-keep`` when the user gave none: ``default``, or fewer (at least 1) where only fewer fit."""
    for keep in range(default, 0, -1):
        if bytes_needed(one, keep, finished_already) <= free:
            return keep
    return 1


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def disk_facts(ckpt_dir: str) -> tuple[int | None, int]:
    """(free bytes of the filesystem that holds ``ckpt_dir`` -- of its nearest existing parent when it does not
    exist yet --, finished checkpoints already in it). (None, 0) when nothing on the way exists."""
    from launcher.resume import finished_checkpoints

    path = os.path.abspath(ckpt_dir)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None, 0
        path = parent
    st = os.statvfs(path)
    try:
        entries = os.listdir(ckpt_dir)
    except OSError:
        entries = []
    return st.f_bavail * st.f_frsize, len(finished_checkpoints(entries))
