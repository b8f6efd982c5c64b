"""Predicted peak GPU memory per rank (and host memory when optimizer state is offloaded).

Pure Python, no torch: the planner calls :func:`estimate` for every candidate configuration (thousands per plan),
so it is a handful of multiplications.

Every term is a separately adjustable coefficient in :class:`MemoryCoefficients`, so that the training issue can fit
them to measured GPU peaks (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``) without touching the
formulas. Sources (../shared/REFERENCE.md section 6 unless noted):

* **Model state** (Megatron, "18 bytes/param"): bf16 weights 2 B + fp32 main grads 4 B + fp32 master weights 4 B +
  Adam m 4 B + Adam v 4 B. With the distributed optimizer the 12 B of fp32 master + m + v are sharded over the
  data-parallel ranks: 6 + 12/d B/param. megatron-core shards over the data-parallel group *with* context parallel
  (``data_parallel_group_with_cp``), so d = DP x CP here (coefficient ``optimizer_shard_over_cp``).
* **Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"): per
  layer and microbatch, in bytes, ``s*b*h*(34 + 5*a*s/h)`` without parallelism or recompute; with tensor parallel t
  but no sequence parallel ``s*b*h*(10 + 24/t + 5*a*s/(h*t))``; with sequence parallel ``s*b*h*(34/t + 5*a*s/(h*t))``;
  selective recompute drops the ``5*a*s/h`` attention-score term; full recompute keeps only the layer input,
  ``2*s*b*h`` (``/t`` with sequence parallel), plus one layer's full activations while it is recomputed. Flash
  attention (Transformer Engine's fused attention and torch SDPA both are) never stores the s x s scores, so the
  score term is zero for both backends we run, and "selective" then saves (almost) nothing over "none". The 34 was
  derived for GPT (4h GeLU MLP, dropout); for Llama's SwiGLU (f = 3.5h), GQA, RMSNorm and no dropout the same
  counting gives 34-36, so the GPT figure is kept as the default and left to the fit.
* **Context parallel** splits the sequence: s -> s/CP in every activation and logits term.
* **Pipeline parallel** (1F1B schedule): the first stage holds the embedding plus L/PP layers and the activations of
  up to PP microbatches in flight (min(PP, number of microbatches)); the last stage holds the output layer, L/PP
  layers, one microbatch in flight and the logits. The peak is the larger of the two (they are the same rank when
  PP = 1). Interleaved schedules (virtual PP) hold more and are not modelled.
* **Logits**: ``s*b*V/t`` elements on the last stage. The bf16 logits (2 B), their fp32 upcast in the cross entropy
  (4 B) and the bf16 gradient flowing back into the output layer (2 B): 8 B/element with megatron's fused
  (in-place) cross entropy; the unfused path keeps another fp32 softmax/gradient copy: 12 B/element. REFERENCE
  quotes the fp32 copy alone (s*b*V*4); the copies around it are why it is a coefficient.
* **Workspace / fragmentation**: the caching allocator reserves more than it allocates (measured on the H200:
  66.2 GiB allocated, 75.6 GiB reserved = +14 %), and the CUDA context, cuBLAS workspaces and NCCL buffers live
  outside torch's counters.

Optimizer offload, as named strategies (``Strategy``) because the mechanism, not an ideal, decides the peak:

* ``"gpu"``: everything on the GPU (the 18 B/param rule above).
* ``"mcore_cpu_offload"``: megatron-core's ``optimizer_cpu_offload=True`` (HybridDeviceOptimizer), as usually
  configured (fraction 1.0, bf16 grads). Measured on the H200 under a 47 GiB cap (../shared/device/README.md): after
  29.9 GiB of bf16 weights + bf16 grad buffer, optimizer *setup* allocated another 29.9 GiB on the GPU -- the fp32
  copy of the parameters (4 B/param, per distributed-optimizer shard) -- before anything moved to the host, and ran
  out of memory. So its peak is max(setup: weights + grads + fp32 copy, training: weights + grads + activations);
  the optimizer state itself lives on the host afterwards.
* ``"host_master"``: fp32 master weights and Adam m, v built on the host from the start (never on the GPU); the GPU
  holds bf16 weights and bf16 grads only: 2 + 2 B/param + activations. Host: 12 B/param of state plus a staging
  copy of the grads for the CPU Adam step. This is the mechanism the 48 GB workstation needs; the training issue
  proves on the device which mechanism really fits and sets the profile's strategy accordingly.

FP8 (Transformer Engine): the bf16 weights and fp32 master stay; TE caches an FP8 copy (and transpose) of each GEMM
weight, about 1 B/param more (``fp8_weight_bytes``). Activations are assumed unchanged (TE saves some GEMM inputs in
FP8, which would lower them; not counted, so the estimate stays conservative).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from launcher.jobspec import Parallelism, Recompute
from launcher.models import ModelSpec

Strategy = Literal["gpu", "mcore_cpu_offload", "host_master"]
STRATEGIES: tuple[Strategy, ...] = ("gpu", "mcore_cpu_offload", "host_master")
OFFLOAD_STRATEGIES: tuple[Strategy, ...] = ("mcore_cpu_offload", "host_master")
Peft = Literal["none", "lora"]

GIB = float(1 << 30)


@dataclass(frozen=True)
class MemoryCoefficients:
    """Every adjustable term of the memory model; defaults from the sources in the module docstring."""

    weight_bytes: float = 2.0  # bf16 weights, B/param
    grad_bytes_fp32: float = 4.0  # fp32 main-grad buffer (grad_reduce_in_fp32, Megatron's default), B/param
    grad_bytes_bf16: float = 2.0  # bf16 grad buffer (grad_reduce_in_fp32=False; the offload strategies), B/param
    optimizer_bytes: float = 12.0  # fp32 master + Adam m + v, B/param, sharded by the distributed optimizer
    optimizer_shard_over_cp: bool = True  # megatron-core shards over DP x CP, not DP alone
    fp8_weight_bytes: float = 1.0  # TE's cached FP8 weight copies, B/param (only with fp8)
    mcore_offload_setup_bytes: float = 4.0  # fp32 param copy megatron allocates on GPU at setup, B/param (measured)
    host_state_bytes: float = 12.0  # host_master / mcore offload: fp32 master + m + v on the host, B/param
    host_grad_staging_bytes: float = 4.0  # fp32 copy of the grads on the host for the CPU Adam step, B/param
    act_sbh: float = 34.0  # Korthikanti: activation bytes per layer / (s*b*h), tensor-parallel-shardable part + rest
    act_sbh_replicated_without_sp: float = 10.0  # of those 34, the part TP does not shard without sequence parallel
    act_scores_coeff: float = 5.0  # Korthikanti's 5*a*s/h attention-score term (only without flash attention)
    act_full_recompute_sbh: float = 2.0  # full recompute: stored layer input per layer / (s*b*h)
    act_selective_saving: float = 0.0  # extra sbh saved by selective recompute beyond the score term (flash: ~0)
    activation_scale: float = 1.0  # overall multiplier for fitting measured activations
    lora_rank: int = 32  # NeMo llm.peft.LoRA default dim; targets linear_qkv, linear_proj, linear_fc1, linear_fc2
    logits_bytes_fused_ce: float = 8.0  # bf16 logits + fp32 upcast + bf16 grad, B per logit element
    logits_bytes_unfused_ce: float = 12.0  # + another fp32 softmax / gradient copy
    fragmentation: float = 0.10  # caching-allocator overhead, fraction of allocated bytes
    workspace_gib: float = 1.5  # CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers, GiB
    host_base_gib: float = 16.0  # per node: OS, Python, dataloader workers, pinned buffers (host check only)


DEFAULT = MemoryCoefficients()


@dataclass(frozen=True)
class MemoryConfig:
    """One parallel/precision/offload configuration of a training run, as the memory model sees it."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    mbs: int = 1
    seq_length: int = 8192
    sequence_parallel: bool = False  # the planner turns it on whenever tp > 1
    distributed_optimizer: bool = True
    recompute: Recompute = "none"
    strategy: Strategy = "gpu"
    fp8: bool = False
    peft: Peft = "none"
    num_microbatches: int | None = None  # per step per DP rank (GBS / (MBS*DP)); None = assume >= pp
    grad_reduce_in_fp32: bool | None = None  # None: fp32 for "gpu", bf16 for the offload strategies (as measured)
    flash_attention: bool = True  # TE fused attention and torch SDPA never store the s x s scores
    cross_entropy_fusion: bool = True

    @classmethod
    def from_parallelism(cls, par: Parallelism, seq_length: int, recompute: Recompute = "none",
                         strategy: Strategy = "gpu", fp8: bool = False, peft: Peft = "none") -> "MemoryConfig":
        """The memory model's view of a plan's (or a JobSpec's) ``Parallelism``."""
        return cls(tp=par.tp, pp=par.pp, cp=par.cp, dp=par.dp, mbs=par.mbs, seq_length=seq_length,
                   sequence_parallel=par.sequence_parallel, distributed_optimizer=par.distributed_optimizer,
                   recompute=recompute, strategy=strategy, fp8=fp8, peft=peft,
                   num_microbatches=max(1, par.gbs // max(1, par.mbs * par.dp)),
                   # NeMo's LoRA recipes switch the fused cross entropy off ("does not function correctly with
                   # LoRA"), and recipes.cpt does the same: the unfused loss keeps another fp32 copy of the logits
                   cross_entropy_fusion=peft != "lora")


@dataclass(frozen=True)
class MemoryEstimate:
    """Itemised peak memory of the most loaded rank, in GiB."""

    strategy: Strategy
    stage: Literal["only", "first", "last"]  # which pipeline stage is the peak ("only" when pp == 1)
    phase: Literal["train", "setup"]  # the moment of the peak: a training step, or optimizer setup
    params_per_rank: int  # parameters held by the peak rank (after TP/PP split)
    weights_gib: float
    grads_gib: float
    optimizer_gib: float  # optimizer state on the GPU (0 when offloaded)
    setup_transient_gib: float  # extra GPU memory only during optimizer setup (mcore_cpu_offload's fp32 copy)
    activations_gib: float
    logits_gib: float
    allocated_gib: float  # tensors at the peak: compare with torch.cuda.max_memory_allocated
    fragmentation_gib: float
    workspace_gib: float
    total_gib: float  # predicted peak GPU memory of the process: compare with the GPU's capacity
    host_gib: float  # host memory for offloaded state, per rank (0 for "gpu")
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def layer_params(model: ModelSpec) -> int:
    """Parameters of one transformer layer (attention q,k,v,o + SwiGLU MLP + two RMSNorms)."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.num_query_groups * model.head_dim
    return 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h


def lora_params_per_layer(model: ModelSpec, rank: int) -> int:
    """LoRA adapter parameters of one layer: r*(in + out) for linear_qkv, linear_proj, linear_fc1, linear_fc2."""
    h, f = model.hidden_size, model.ffn_hidden_size
    kv = model.num_query_groups * model.head_dim
    return rank * ((h + h + 2 * kv) + (h + h) + (h + 2 * f) + (f + h))


def _stage_params(model: ModelSpec, cfg: MemoryConfig, stage: str) -> float:
    """Parameters on one rank of the given pipeline stage (TP-sharded; norms counted as sharded: negligible)."""
    layers = model.num_layers / cfg.pp
    emb = model.vocab_size * model.hidden_size
    p = layers * layer_params(model)
    if stage in ("only", "first"):
        p += emb
    if stage in ("only", "last"):
        # untied: the output layer; tied with pp > 1: megatron keeps a copy of the embedding on the last stage.
        if not model.tied_embeddings or stage == "last":
            p += emb
        p += model.hidden_size  # final norm
    return p / cfg.tp


def _act_per_layer_bytes(model: ModelSpec, cfg: MemoryConfig, c: MemoryCoefficients) -> tuple[float, float]:
    """(stored bytes per layer per microbatch, bytes of one layer's full activations) per Korthikanti et al."""
    s = cfg.seq_length / cfg.cp
    b, h, t, a = cfg.mbs, model.hidden_size, cfg.tp, model.num_attention_heads
    sbh = s * b * h
    if cfg.sequence_parallel or t == 1:
        base = c.act_sbh / t
    else:
        base = c.act_sbh_replicated_without_sp + (c.act_sbh - c.act_sbh_replicated_without_sp) / t
    scores = 0.0 if cfg.flash_attention else c.act_scores_coeff * a * s / (h * t)
    full_layer = sbh * (base + scores) * c.activation_scale
    if cfg.recompute == "full":
        inp = c.act_full_recompute_sbh / (t if cfg.sequence_parallel else 1)
        return sbh * inp * c.activation_scale, full_layer
    if cfg.recompute == "selective":
        return sbh * max(base - c.act_selective_saving / t, 0.0) * c.activation_scale, full_layer
    return full_layer, full_layer


def estimate(model: ModelSpec, cfg: MemoryConfig, coeffs: MemoryCoefficients = DEFAULT) -> MemoryEstimate:
    """Predicted peak memory of the most loaded rank for ``cfg`` (see the module docstring for every term)."""
    c = coeffs
    strategy: Strategy = "gpu" if cfg.peft == "lora" else cfg.strategy
    notes: list[str] = []
    if cfg.peft == "lora" and cfg.strategy != "gpu":
        notes.append("LoRA trains only the adapters: their optimizer state is small, nothing is offloaded")
    shard = cfg.dp * (cfg.cp if c.optimizer_shard_over_cp else 1) if cfg.distributed_optimizer else 1
    grad_fp32 = cfg.grad_reduce_in_fp32 if cfg.grad_reduce_in_fp32 is not None else strategy == "gpu"
    grad_b = c.grad_bytes_fp32 if grad_fp32 else c.grad_bytes_bf16
    stored, full_layer = _act_per_layer_bytes(model, cfg, c)
    layers = model.num_layers / cfg.pp
    in_flight = cfg.pp if cfg.num_microbatches is None else max(1, min(cfg.pp, cfg.num_microbatches))
    logit_elems = cfg.seq_length / cfg.cp * cfg.mbs * model.vocab_size / cfg.tp
    logits_b = logit_elems * (c.logits_bytes_fused_ce if cfg.cross_entropy_fusion else c.logits_bytes_unfused_ce)
    lora_p = 0.0
    if cfg.peft == "lora":
        lora_p = layers * lora_params_per_layer(model, c.lora_rank) / cfg.tp

    best: tuple[float, ...] | None = None
    best_stage = "only"
    for stage in (("only",) if cfg.pp == 1 else ("first", "last")):
        p = _stage_params(model, cfg, stage)
        w = p * c.weight_bytes + (p * c.fp8_weight_bytes if cfg.fp8 else 0.0)
        host = 0.0
        transient = 0.0
        if cfg.peft == "lora":
            # frozen base: bf16 weights only; the adapters carry the full 18 B/param (tiny)
            w += lora_p * c.weight_bytes
            g = lora_p * c.grad_bytes_fp32
            opt = lora_p * c.optimizer_bytes / shard
        elif strategy == "gpu":
            g = p * grad_b
            opt = p * c.optimizer_bytes / shard
        else:
            g = p * grad_b
            opt = 0.0
            host = p * (c.host_state_bytes + c.host_grad_staging_bytes) / shard
            if strategy == "mcore_cpu_offload":
                transient = p * c.mcore_offload_setup_bytes / shard
        n_mb = in_flight if stage == "first" else 1
        act = layers * stored * n_mb
        if cfg.recompute == "full":
            act += full_layer  # the layer being recomputed during the backward pass
        lg = logits_b if stage != "first" else 0.0
        train_alloc = w + g + opt + act + lg
        setup_alloc = w + g + opt + transient
        alloc = max(train_alloc, setup_alloc)
        if best is None or alloc > best[0]:
            best = (alloc, p, w, g, opt, transient, act, lg, host, float(setup_alloc > train_alloc))
            best_stage = stage
    assert best is not None  # the loop runs at least once
    alloc, p, w, g, opt, transient, act, lg, host, setup_phase = best
    frag = alloc * c.fragmentation
    if strategy == "mcore_cpu_offload":
        notes.append(
            "megatron-core optimizer_cpu_offload allocates an fp32 copy of the parameters on the GPU at optimizer "
            f"setup ({transient / GIB:.1f} GiB here) before moving state to the host (measured on the H200)"
        )
    if strategy == "host_master":
        notes.append("fp32 master weights and Adam m, v live on the host; the GPU holds bf16 weights and bf16 grads")
    if cfg.fp8:
        notes.append("fp8: bf16 weights and fp32 master stay; TE's FP8 weight copies add ~1 B/param")
    if cfg.distributed_optimizer and shard > 1:
        notes.append(f"optimizer state sharded over DP x CP = {shard} ranks "
                     "(megatron-core's data-parallel group with CP)")
    if setup_phase:
        notes.append("the peak is at optimizer setup, not during a training step")
    return MemoryEstimate(
        strategy=strategy,
        stage=best_stage,  # type: ignore[arg-type]
        phase="setup" if setup_phase else "train",
        params_per_rank=int(p),
        weights_gib=w / GIB,
        grads_gib=g / GIB,
        optimizer_gib=opt / GIB,
        setup_transient_gib=transient / GIB,
        activations_gib=act / GIB,
        logits_gib=lg / GIB,
        allocated_gib=alloc / GIB,
        fragmentation_gib=frag / GIB,
        workspace_gib=c.workspace_gib,
        total_gib=(alloc + frag) / GIB + c.workspace_gib,
        host_gib=host / GIB,
        notes=tuple(notes),
    )
