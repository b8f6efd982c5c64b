"""Checks of a job's TrainSpec that need no NeMo objects, shared by the job (``recipes.cpt.train_recipe``, which
refuses to build a recipe from a spec with errors) and the launcher's pre-flight (the same checks before anything is
queued). All problems at once, each naming the field and what is allowed.
"""

from __future__ import annotations

from typing import Literal

from launcher.errors import Problem
from launcher.jobspec import TrainSpec
from launcher.models import get_model

ResolvedAttention = Literal["te", "sdpa"]


def train_spec_problems(spec: TrainSpec, attention: ResolvedAttention | None = None) -> list[Problem]:
    p, probs = spec.parallelism, []

    def err(field: str, msg: str) -> None:
        probs.append(Problem("error", f"jobspec train.{field}", msg))

    try:
        m = get_model(spec.model)
    except KeyError as e:
        err("model", str(e))
        return probs
    layers = spec.num_layers or m.num_layers
    world = spec.num_nodes * spec.gpus_per_node
    if p.world_size != world:
        err("parallelism", f"tp*pp*cp*dp={p.tp}*{p.pp}*{p.cp}*{p.dp}={p.world_size} but num_nodes*gpus_per_node"
            f"={spec.num_nodes}*{spec.gpus_per_node}={world}")
    if p.gbs % (p.mbs * p.dp):
        err("parallelism.gbs", f"gbs={p.gbs} is not a multiple of mbs*dp={p.mbs}*{p.dp}")
    if m.num_attention_heads % p.tp or m.num_query_groups % p.tp:
        err("parallelism.tp", f"tp={p.tp} must divide {m.num_attention_heads} heads and {m.num_query_groups} KV groups")
    if layers % p.pp:
        err("parallelism.pp", f"pp={p.pp} must divide num_layers={layers}")
    if p.virtual_pp is not None:
        if p.pp < 2:
            err("parallelism.virtual_pp", f"virtual_pp={p.virtual_pp} needs pp>=2 (pp={p.pp})")
        elif (layers // p.pp) % p.virtual_pp:
            err("parallelism.virtual_pp", f"layers per stage {layers // p.pp} not divisible by virtual_pp={p.virtual_pp}")
    if p.sequence_parallel and p.tp < 2:
        err("parallelism.sequence_parallel", "sequence_parallel=true needs tp>=2")
    if spec.seq_length % (2 * p.cp) and p.cp > 1:
        err("seq_length", f"seq_length={spec.seq_length} must be a multiple of 2*cp={2 * p.cp}")
    if attention == "sdpa":
        if p.cp > 1:
            err("attention", "attention=sdpa (no Transformer Engine) cannot do context parallelism; cp must be 1")
        if spec.fp8:
            err("fp8", "fp8 needs Transformer Engine (attention=te)")
    if spec.peft not in ("none", "lora"):
        err("peft", f"peft={spec.peft!r}: allowed: none (full-parameter CPT), lora (adapters, a different experiment)")
    if spec.peft == "lora" and spec.optimizer_offload:
        err("optimizer_offload", "peft=lora keeps its tiny optimizer state on the GPU; optimizer_offload must be false")
    if not spec.train_data and not spec.blend:
        err("train_data", "empty; give the data stage's prefixes, e.g. [\"/data/ja_text_document\"]")
    names = [v.name for v in spec.valid_sets]
    if len(set(names)) != len(names):
        err("valid_sets", f"names {names}: each validation set needs its own name")
    if not spec.valid_data:
        err("valid_data", "empty; give explicit validation prefixes (never the 900,50,50 split of the training data)")
    if len(spec.valid_data) > 1 and isinstance(spec.valid_data[0], (int, float)):
        err("valid_data", "weights are not allowed for validation data; give prefixes only")
    if not spec.tokenizer_dir:
        err("tokenizer_dir", "empty; give the HF model directory holding tokenizer.json (never the GPT-2 fallback)")
    if not spec.checkpoint_dir:
        err("checkpoint_dir", "empty; the run's own checkpoints go there (resume_if_exists)")
    if not spec.log_dir:
        err("log_dir", "empty")
    if spec.base_checkpoint and spec.random_init:
        err("random_init", f"random_init=true but base_checkpoint={spec.base_checkpoint!r}; choose one")
    if not spec.base_checkpoint and not spec.random_init:
        err("base_checkpoint", "empty; give the convert stage's output, or set random_init=true for a benchmark")
    if spec.optimizer_offload:
        if not p.distributed_optimizer:
            err("optimizer_offload", "optimizer offload needs distributed_optimizer=true")
        if not 0.0 < spec.offload_fraction <= 1.0:
            err("offload_fraction", f"{spec.offload_fraction} not in (0, 1]")
    if spec.recompute_num_layers is not None and spec.recompute != "full":
        err("recompute_num_layers", "only meaningful with recompute='full'")
    if spec.ckpt_every_n_steps < 1 or spec.ckpt_keep < 1:
        err("ckpt_every_n_steps", "ckpt_every_n_steps and ckpt_keep must be >= 1")
    if spec.max_steps < 1:
        err("max_steps", f"{spec.max_steps} < 1")
    if spec.val_check_interval > spec.max_steps:
        # Lightning refuses this at fit start, after minutes of setup (seen on the H200: "val_check_interval (1000)
        # must be less than or equal to the number of the training batches")
        err("val_check_interval", f"{spec.val_check_interval} > max_steps={spec.max_steps}; use <= max_steps")
    if spec.optim.warmup_steps >= spec.max_steps:
        probs.append(Problem("warning", "jobspec train.optim.warmup_steps",
                             f"warmup_steps={spec.optim.warmup_steps} >= max_steps={spec.max_steps}: lr never decays"))
    return probs
