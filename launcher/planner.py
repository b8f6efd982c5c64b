"""Choose TP/PP/CP/DP, micro-batch size, recompute and optimizer placement for the GPUs at hand.

Pure: (hardware, nodes, model, GBS, seq length, pins) -> :class:`PlanChoice`. It enumerates every structurally
valid candidate, predicts its peak memory with :mod:`launcher.memory`, keeps those that fit, and ranks them by a
small, documented throughput model (:class:`SpeedCoefficients`). A pinned knob that cannot work, or cannot fit, is
a :class:`~launcher.errors.ConfigError` naming the flag and the nearest configuration that would work.

Two knobs change the experiment rather than the way it runs, so the planner never turns them on by itself:
``peft`` (LoRA trains adapters, not the model) and ``fp8`` (different numerics). ``None`` means "none"/off for them;
when nothing fits, the error lists them as *different experiments*, one flag away.

``--optimizer-offload auto`` offloads only when no configuration fits with the optimizer state on the GPU: an
offloaded step depends on host CPU and PCIe bandwidth, and its mechanism is the least proven part of a plan.

The throughput model (relative speed only -- it ranks candidates, it is not a benchmark):
step time per rank = compute x recompute factor / GEMM efficiency x (fp8 speed-up)^-1
+ pipeline bubble (compute x (pp-1)/m, m = microbatches per step)
+ TP comms (with sequence parallel: 8 all-gathers/reduce-scatters of s*b*h bf16 per layer and microbatch over
NVLink or PCIe; TP never crosses nodes) + CP comms (K,V ring exchange, mostly overlapped)
+ DP comms (distributed optimizer reduce-scatter of grads + all-gather of bf16 params, mostly overlapped with the
backward pass) + PP point-to-point + optimizer offload (grads to host, params back, CPU Adam).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Literal

from launcher.errors import ConfigError, Problem
from launcher.jobspec import Parallelism, Recompute
from launcher.memory import (
    DEFAULT,
    MemoryCoefficients,
    MemoryConfig,
    MemoryEstimate,
    Peft,
    Strategy,
    estimate,
)
from launcher.models import MODELS, ModelSpec
from launcher.profiles import Hardware

OffloadPin = Literal["auto", "on", "off"]

# What the GPU has shown of the host-master mechanism so far (benchmarks/train/README.md), said with every plan
# that relies on it, so nobody mistakes a prediction for a proven run.
MEASURED_HOST_MASTER = (
    "Measured (H200 capped at 47 GiB, 32 layers, seq 8192): the fp32 master weights and Adam state are built on the "
    "host (megatron-core precision-aware optimizer + CPU offload; 111-129 GiB host RAM at setup), so setup fits where "
    "plain optimizer_cpu_offload ran out of memory; the first training step then ran out of memory on fragmented "
    "free memory (14% measured vs the model's 10%) before expandable segments were enabled. Not yet proven to train "
    "at seq 8192 on 48 GB: if it fails, --seq-length 4096 or one of the different experiments below.")
RECOMPUTES: tuple[Recompute, ...] = ("none", "selective", "full")

# Dense bf16 tensor TFLOP/s per GPU model (vendor data sheets), for the compute vs comms/offload balance only.
GPU_TFLOPS: dict[str, float] = {
    "h100-80gb": 989.0,
    "h200-141gb": 989.0,
    "a100-80gb": 312.0,
    "a100-40gb": 312.0,
    "rtx6000ada-48gb": 364.0,
    "l40s-48gb": 362.0,
    "a6000-48gb": 155.0,
}


@dataclass(frozen=True)
class SpeedCoefficients:
    """Constants of the throughput model; rough public figures, adjustable like the memory coefficients."""

    base_mfu: float = 0.45  # achieved fraction of peak on large GEMMs (NVIDIA's 8B recipe: ~10k tok/s/GPU on H100)
    recompute_overhead: tuple[float, float, float] = (0.0, 0.03, 0.33)  # none, selective, full (one more forward)
    gemm_tokens_half: float = 256.0  # GEMM efficiency t/(t+this), t = tokens per microbatch per rank
    gemm_width_half: float = 128.0  # GEMM efficiency w/(w+this), w = hidden/tp
    fp8_speedup: float = 1.35  # NVIDIA 8B recipe: 10,254 -> 13,882-14,451 tok/s/GPU
    intra_node_gbs: dict[str, float] = field(default_factory=lambda: {"nvlink": 300.0, "pcie": 20.0})  # GB/s
    inter_node_gbs: dict[str, float] = field(
        default_factory=lambda: {"infiniband": 45.0, "ethernet": 10.0, "none": 0.0})  # GB/s per GPU
    cp_exposed: float = 0.3  # fraction of CP ring traffic not hidden behind attention compute
    dp_exposed: float = 0.2  # fraction of distributed-optimizer traffic not hidden behind the backward pass
    host_link_gbs: float = 20.0  # GPU<->host copies (PCIe), GB/s per GPU
    host_adam_params_per_s: float = 1.0e9  # CPU Adam throughput per node (DeepSpeed CPU-Adam class)
    offload_fixed_penalty: float = 0.05  # a step that depends on host CPU and PCIe: prefer the GPU when it is close
    tight_memory_fraction: float = 0.92  # above this share of GPU memory a plan is near the model's error margin...
    tight_memory_penalty: float = 0.03  # ...so it ranks as if this much slower (it still counts as fitting)


DEFAULT_SPEED = SpeedCoefficients()


@dataclass(frozen=True)
class Pins:
    """Knobs the user fixed on the command line; None = the planner chooses."""

    tp: int | None = None
    pp: int | None = None
    cp: int | None = None
    mbs: int | None = None
    recompute: Recompute | None = None
    optimizer_offload: OffloadPin = "auto"
    peft: Peft | None = None  # None = "none": the planner never switches to LoRA by itself
    fp8: bool | None = None  # None = off: fp8 changes numerics, so only on request


FLAGS: dict[str, str] = {
    "tp": "--tp", "pp": "--pp", "cp": "--cp", "mbs": "--mbs", "recompute": "--recompute",
    "optimizer_offload": "--optimizer-offload", "peft": "--peft", "fp8": "--fp8",
}


@dataclass(frozen=True)
class Candidate:
    """One configuration the planner considered."""

    parallelism: Parallelism
    recompute: Recompute
    strategy: Strategy
    fp8: bool
    peft: Peft
    memory: MemoryEstimate
    capacity_gib: float
    host_capacity_gib: float
    host_need_gib: float  # offloaded state of all ranks on one node + the host base allowance (0 for "gpu")
    tokens_per_s_per_gpu: float  # throughput model, for ranking only
    score: float  # what the ranking sorts by: tokens_per_s_per_gpu, less a penalty when memory is tight
    relative_speed: float = 0.0  # tokens_per_s_per_gpu / the chosen candidate's

    @property
    def tight(self) -> bool:
        return self.score < self.tokens_per_s_per_gpu

    @property
    def fits_gpu(self) -> bool:
        return self.memory.total_gib <= self.capacity_gib

    @property
    def fits_host(self) -> bool:
        return self.memory.host_gib == 0.0 or self.host_need_gib <= self.host_capacity_gib

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host

    @property
    def offload(self) -> bool:
        return self.strategy != "gpu"

    def describe(self) -> str:
        p = self.parallelism
        off = {"gpu": "optimizer on GPU", "mcore_cpu_offload": "optimizer offload (megatron-core)",
               "host_master": "optimizer state on host"}[self.strategy]
        extra = (", LoRA" if self.peft == "lora" else "") + (", fp8" if self.fp8 else "")
        return (f"tp={p.tp} pp={p.pp} cp={p.cp} dp={p.dp} mbs={p.mbs} recompute={self.recompute}, {off}{extra}: "
                f"{self.memory.total_gib:.1f} of {self.capacity_gib:.1f} GiB")

    def why_not(self) -> str:
        out = []
        if not self.fits_gpu:
            out.append(f"GPU {self.memory.total_gib:.1f} > {self.capacity_gib:.1f} GiB")
        if not self.fits_host:
            out.append(f"host {self.host_need_gib:.0f} > {self.host_capacity_gib:.0f} GiB")
        return "; ".join(out)


@dataclass(frozen=True)
class PlanChoice:
    """The chosen configuration, why, and every candidate (fitting ones first, fastest first)."""

    model: str
    nodes: int
    gpus: int
    gbs: int
    seq_length: int
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    explanation: str

    @property
    def parallelism(self) -> Parallelism:
        return self.chosen.parallelism

    @property
    def memory(self) -> MemoryEstimate:
        return self.chosen.memory

    @property
    def recompute(self) -> Recompute:
        return self.chosen.recompute

    @property
    def strategy(self) -> Strategy:
        return self.chosen.strategy

    @property
    def optimizer_offload(self) -> bool:
        return self.chosen.offload

    def recompute_settings(self) -> dict[str, object]:
        """megatron-core recompute settings that match what the memory model assumed.

        "full" means every layer's input is checkpointed and layers are recomputed one at a time:
        ``recompute_method="uniform", recompute_num_layers=1``. (``uniform`` with N > 1 recomputes chunks of N layers
        and holds a whole chunk's activations during the backward pass -- with N = L/pp that is no saving at all.)
        """
        if self.recompute == "full":
            return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
        if self.recompute == "selective":
            return {"recompute_granularity": "selective", "recompute_method": None, "recompute_num_layers": None}
        return {"recompute_granularity": None, "recompute_method": None, "recompute_num_layers": None}

    def candidates_json(self, limit: int = 20) -> list[dict[str, object]]:
        """The --explain table as data (best first)."""
        out: list[dict[str, object]] = []
        for c in self.candidates[:limit]:
            p = c.parallelism
            out.append({"tp": p.tp, "pp": p.pp, "cp": p.cp, "dp": p.dp, "mbs": p.mbs, "recompute": c.recompute,
                        "strategy": c.strategy, "predicted_peak_gib": round(c.memory.total_gib, 2),
                        "host_gib": round(c.host_need_gib, 1), "fits": c.fits,
                        "relative_speed": round(c.relative_speed, 3), "chosen": c is self.chosen})
        return out

    def memory_json(self) -> dict[str, object]:
        """The ``"memory"`` object of ``cpt-launch plan --json``."""
        m = self.chosen.memory
        return {
            "predicted_peak_gib": round(m.total_gib, 2),
            "capacity_gib": round(self.chosen.capacity_gib, 2),
            "fits": self.chosen.fits,
            "strategy": m.strategy,
            "allocated_gib": round(m.allocated_gib, 2),
            "host_gib": round(self.chosen.host_need_gib, 1),
            "host_capacity_gib": round(self.chosen.host_capacity_gib, 1),
            "breakdown_gib": {k: round(getattr(m, k + "_gib"), 2) for k in (
                "weights", "grads", "optimizer", "setup_transient", "activations", "logits", "fragmentation",
                "workspace")},
        }


# --------------------------------------------------------------------------------------------------- helpers


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _tp_ok(model: ModelSpec, hw: Hardware, world: int, tp: int) -> bool:
    return (tp >= 1 and model.num_attention_heads % tp == 0 and model.num_query_groups % tp == 0
            and tp <= hw.gpus_per_node and world % tp == 0)


def _speed(model: ModelSpec, hw: Hardware, world: int, p: Parallelism, seq: int, recompute: Recompute,
           strategy: Strategy, fp8: bool, mem: MemoryEstimate, sc: SpeedCoefficients) -> float:
    """Predicted tokens/s/GPU of one candidate (the model in the module docstring)."""
    tflops = GPU_TFLOPS.get(hw.gpu, 300.0) * 1e12
    tokens = p.gbs * seq
    m = max(1, p.gbs // (p.mbs * p.dp))
    s_rank = seq / p.cp
    t_mb = p.mbs * s_rank
    gemm_eff = (t_mb / (t_mb + sc.gemm_tokens_half)) * (
        (model.hidden_size / p.tp) / (model.hidden_size / p.tp + sc.gemm_width_half))
    rc = sc.recompute_overhead[RECOMPUTES.index(recompute)]
    # the busiest pipeline stage sets the pace: L/pp layers plus the output layer (6*V*h FLOPs/token) on the last
    fpt = model.flops_per_token(seq)
    out_fpt = 6.0 * model.vocab_size * model.hidden_size
    stage_fpt = (fpt - out_fpt) / p.pp + out_fpt if p.pp > 1 else fpt
    compute = stage_fpt * tokens / (world / p.pp) / (tflops * sc.base_mfu * gemm_eff) * (1 + rc)
    if fp8:
        compute /= sc.fp8_speedup
    bubble = compute * (p.pp - 1) / m
    intra = sc.intra_node_gbs.get(hw.interconnect, 20.0) * 1e9
    inter = sc.inter_node_gbs.get(hw.network, 0.0) * 1e9 or intra
    layers_rank = model.num_layers / p.pp
    act_bytes = s_rank * p.mbs * model.hidden_size * 2.0
    tp_comm = 0.0
    if p.tp > 1:
        fwd_repeat = 1.5 if recompute == "full" else 1.0  # the recomputed forward repeats its collectives
        tp_comm = 8 * (p.tp - 1) / p.tp * act_bytes * layers_rank * m * fwd_repeat / intra
    cp_comm = 0.0
    if p.cp > 1:
        kv = model.num_query_groups * model.head_dim
        bw = intra if p.tp * p.cp <= hw.gpus_per_node else inter
        cp_comm = 3 * 2 * s_rank * p.mbs * kv * 2.0 * (p.cp - 1) * layers_rank * m / bw * sc.cp_exposed
    d = p.dp * p.cp
    dp_comm = 0.0
    if d > 1:
        bw = intra if p.tp * p.cp * p.dp <= hw.gpus_per_node else inter
        grad_b = 4.0 if strategy == "gpu" else 2.0
        dp_comm = mem.params_per_rank * (grad_b + 2.0) * (d - 1) / d / bw * sc.dp_exposed
    pp_comm = 0.0
    if p.pp > 1:
        bw = intra if world <= hw.gpus_per_node else inter
        pp_comm = 2 * act_bytes / p.tp * m / bw
    offload = 0.0
    if strategy != "gpu":
        ranks_node = min(world, hw.gpus_per_node)
        shard = mem.params_per_rank / d
        offload = (mem.params_per_rank * 4.0 / (sc.host_link_gbs * 1e9)
                   + shard * ranks_node / sc.host_adam_params_per_s)
        offload += sc.offload_fixed_penalty * compute
    step = compute + bubble + tp_comm + cp_comm + dp_comm + pp_comm + offload
    return tokens / world / step


# --------------------------------------------------------------------------------------------------- planning


def _enumerate(model: ModelSpec, hw: Hardware, nodes: int, gbs: int, seq: int, pins: Pins, offload_strategy: Strategy,
               coeffs: MemoryCoefficients, sc: SpeedCoefficients) -> list[Candidate]:
    """Every structurally valid candidate, with pinned values included even when they are unusual (mbs=3)."""
    world = nodes * hw.gpus_per_node
    peft: Peft = pins.peft or "none"
    fp8 = bool(pins.fp8)
    tps = sorted({t for t in _divisors(model.num_attention_heads) if t <= hw.gpus_per_node} | (
        {pins.tp} if pins.tp else set()))
    pps = sorted(set(_divisors(model.num_layers)) | ({pins.pp} if pins.pp else set()))
    cps = sorted({c for c in (1, 2, 4, 8, 16, 32) if c <= world} | ({pins.cp} if pins.cp else set()))
    mbss = sorted({1, 2, 4, 8} | ({pins.mbs} if pins.mbs else set()))
    strategies: tuple[Strategy, ...] = ("gpu",) if peft == "lora" else ("gpu", offload_strategy)
    host_cap = float(hw.host_memory_gib)
    cap = float(hw.gpu_memory)
    out: list[Candidate] = []
    for tp in tps:
        if not _tp_ok(model, hw, world, tp):
            continue
        for pp in pps:
            if pp < 1 or model.num_layers % pp or world % (tp * pp):
                continue
            for cp in cps:
                if cp < 1 or world % (tp * pp * cp):
                    continue
                # causal load balancing needs seq divisible by 2*cp; sequence parallel needs seq/cp divisible by tp
                if cp > 1 and seq % (2 * cp):
                    continue
                if seq % cp or (seq // cp) % tp:
                    continue
                dp = world // (tp * pp * cp)
                for mbs in mbss:
                    if mbs < 1 or gbs % (mbs * dp):
                        continue
                    # LoRA: NeMo's own LoRA recipes turn the distributed optimizer off (the adapters' state is tiny)
                    par = Parallelism(tp=tp, pp=pp, cp=cp, dp=dp, mbs=mbs, gbs=gbs, sequence_parallel=tp > 1,
                                      distributed_optimizer=peft != "lora")
                    for rc in RECOMPUTES:
                        gpu_fits = False
                        for st in strategies:
                            if st != "gpu" and gpu_fits and pins.optimizer_offload == "auto":
                                continue  # dominated: slower, and the GPU variant already fits
                            mc = MemoryConfig.from_parallelism(par, seq, rc, st, fp8, peft)
                            mem = estimate(model, mc, coeffs)
                            host_need = 0.0
                            if mem.host_gib:
                                host_need = mem.host_gib * min(world, hw.gpus_per_node) + coeffs.host_base_gib
                            speed = _speed(model, hw, world, par, seq, rc, st, fp8, mem, sc)
                            score = speed
                            if mem.total_gib > sc.tight_memory_fraction * cap:
                                score *= 1.0 - sc.tight_memory_penalty
                            out.append(Candidate(par, rc, st, fp8, peft, mem, cap, host_cap, host_need, speed, score))
                            gpu_fits = st == "gpu" and mem.total_gib <= cap
    return out


def _matches(c: Candidate, pins: Pins) -> bool:
    p = c.parallelism
    if pins.tp is not None and p.tp != pins.tp:
        return False
    if pins.pp is not None and p.pp != pins.pp:
        return False
    if pins.cp is not None and p.cp != pins.cp:
        return False
    if pins.mbs is not None and p.mbs != pins.mbs:
        return False
    if pins.recompute is not None and c.recompute != pins.recompute:
        return False
    if pins.optimizer_offload == "on" and not c.offload:
        return False
    if pins.optimizer_offload == "off" and c.offload:
        return False
    return True


def _pinned_names(pins: Pins) -> list[str]:
    names = [k for k in ("tp", "pp", "cp", "mbs", "recompute") if getattr(pins, k) is not None]
    if pins.optimizer_offload != "auto":
        names.append("optimizer_offload")
    return names


def _unpin(pins: Pins, names: tuple[str, ...]) -> Pins:
    kw: dict[str, object] = {n: ("auto" if n == "optimizer_offload" else None) for n in names}
    return replace(pins, **kw)  # type: ignore[arg-type]


def _pin_value(pins: Pins, name: str) -> object:
    return getattr(pins, name)


def _cand_value(c: Candidate, name: str) -> object:
    if name == "recompute":
        return c.recompute
    if name == "optimizer_offload":
        return "on" if c.offload else "off"
    return getattr(c.parallelism, name)


_RULES: dict[str, str] = {
    "tp": "must divide the {heads} attention heads and {groups} query groups, divide the {world} GPUs and be at most "
          "{gpn} (TP stays inside one node)",
    "pp": "must divide the {layers} layers and the GPUs left after TP",
    "cp": "must divide the GPUs left after TP and PP; seq {seq} must be divisible by 2*cp (and seq/cp by tp)",
    "mbs": "GBS {gbs} must be divisible by mbs x DP",
    "recompute": "allowed: none, selective, full",
    "optimizer_offload": "allowed: auto, on, off",
}


def _best(cands: list[Candidate]) -> Candidate | None:
    fit = [c for c in cands if c.fits]
    return max(fit, key=_rank_key) if fit else None


def _rank_key(c: Candidate) -> tuple[int, float, float]:
    # Optimizer offload only when nothing fits with the state on the GPU: it makes every step depend on host CPU and
    # PCIe bandwidth, and its mechanism is the least proven part of a plan (see launcher.memory).
    return (0 if c.offload else 1, round(c.score, 6), -c.memory.total_gib)


def _fmt_pin(name: str, value: object) -> str:
    return f"{name.replace('_', '-')}={value}"


def plan(hardware: Hardware, nodes: int, model: ModelSpec, gbs: int, seq_length: int, pins: Pins | None = None, *,
         offload_strategy: Strategy = "host_master", coeffs: MemoryCoefficients = DEFAULT,
         speed: SpeedCoefficients = DEFAULT_SPEED) -> PlanChoice:
    """Choose the fastest configuration that fits; raise ConfigError naming any pinned flag that cannot work.

    ``offload_strategy`` is the mechanism used when the optimizer is offloaded ("host_master" or
    "mcore_cpu_offload"): the training issue proves on the GPU which one really runs, and the profile passes it.
    """
    pins = pins or Pins()
    problems: list[Problem] = []
    world = nodes * hardware.gpus_per_node
    if nodes < 1:
        problems.append(Problem("error", "--nodes", f"nodes={nodes}: must be at least 1"))
    elif nodes > 1 and hardware.network == "none":
        problems.append(Problem("error", "--nodes", f"nodes={nodes}: this profile's nodes are not networked "
                                                    "(network: none); allowed: 1"))
    if hardware.gpus_per_node < 1:
        problems.append(Problem("error", "hardware.gpus_per_node", "the training stage needs at least one GPU"))
    if gbs < 1:
        problems.append(Problem("error", "--gbs", f"gbs={gbs}: must be at least 1"))
    if seq_length < 1 or seq_length > model.max_position_embeddings:
        problems.append(Problem("error", "--seq-length", f"seq_length={seq_length}: {model.name} allows 1.."
                                                         f"{model.max_position_embeddings}"))
    if offload_strategy == "gpu":
        problems.append(Problem("error", "offload_strategy", "must be an offload strategy: host_master or "
                                                             "mcore_cpu_offload"))
    for name in ("tp", "pp", "cp", "mbs"):
        v = getattr(pins, name)
        if v is not None and v < 1:
            problems.append(Problem("error", FLAGS[name], f"{name}={v}: must be a positive integer"))
    if pins.recompute is not None and pins.recompute not in RECOMPUTES:
        problems.append(Problem("error", "--recompute", f"recompute={pins.recompute}: {_RULES['recompute']}"))
    if pins.optimizer_offload not in ("auto", "on", "off"):
        problems.append(Problem("error", "--optimizer-offload",
                                f"optimizer-offload={pins.optimizer_offload}: {_RULES['optimizer_offload']}"))
    if pins.peft not in (None, "none", "lora"):
        problems.append(Problem("error", "--peft", f"peft={pins.peft}: allowed: none, lora"))
    if pins.peft == "lora" and pins.optimizer_offload == "on":
        problems.append(Problem("error", "--optimizer-offload",
                                "optimizer-offload=on with --peft lora: LoRA's optimizer state is tiny; nothing to "
                                "offload (use auto or off)"))
    if problems:
        raise ConfigError(problems)

    universe = _enumerate(model, hardware, nodes, gbs, seq_length, pins, offload_strategy, coeffs, speed)
    matching = [c for c in universe if _matches(c, pins)]
    rules = {k: v.format(heads=model.num_attention_heads, groups=model.num_query_groups, world=world,
                         gpn=hardware.gpus_per_node, layers=model.num_layers, seq=seq_length, gbs=gbs)
             for k, v in _RULES.items()}

    if not universe:
        raise ConfigError([_gbs_problem(model, hardware, world, gbs, seq_length)])
    if not matching:
        # Some pinned value is structurally impossible: name each such knob, with what is allowed given the others.
        for name in _pinned_names(pins):
            others = _unpin(pins, (name,))
            possible = [c for c in universe if _matches(c, others)] or universe
            allowed = sorted({_cand_value(c, name) for c in possible}, key=str)
            if name in ("tp", "pp", "cp", "mbs"):
                allowed = sorted(allowed, key=lambda v: int(str(v)))
            if _pin_value(pins, name) in allowed:
                continue
            msg = f"{_fmt_pin(name, _pin_value(pins, name))}: {rules[name]}"
            if allowed:
                msg += f"; allowed here: {', '.join(str(a) for a in allowed)}"
                near = _nearest(possible, name, _pin_value(pins, name))
                if near:
                    msg += "; nearest that works: " + " or ".join(
                        f"{_fmt_pin(name, _cand_value(c, name))} ({c.describe()})" for c in near)
            problems.append(Problem("error", FLAGS[name], msg))
        if not problems:  # each pin is possible alone, but not together
            names = _pinned_names(pins)
            alt = _relax(universe, pins, names)
            msg = ("the pinned values " + ", ".join(_fmt_pin(n, _pin_value(pins, n)) for n in names)
                   + " do not combine on " + f"{world} GPUs")
            if alt is not None:
                msg += f"; nearest that works: {alt[1].describe()} (changing {', '.join(FLAGS[n] for n in alt[0])})"
            problems.append(Problem("error", " ".join(FLAGS[n] for n in names), msg))
        raise ConfigError(problems)

    chosen = _best(matching)
    if chosen is None:
        raise ConfigError([_no_fit_problem(hardware, nodes, model, gbs, seq_length, pins, universe, matching,
                                           offload_strategy, coeffs, speed)])

    fitting = sorted((c for c in matching if c.fits), key=_rank_key, reverse=True)
    rest = sorted((c for c in matching if not c.fits), key=lambda c: c.memory.total_gib)
    top = chosen.tokens_per_s_per_gpu
    ranked = tuple(_with_relative(c, top) for c in fitting + rest)
    chosen = ranked[0]
    return PlanChoice(model=model.name, nodes=nodes, gpus=world, gbs=gbs, seq_length=seq_length, chosen=chosen,
                      candidates=ranked,
                      explanation=_explain(hardware, model, pins, chosen, matching, universe, gbs, seq_length, nodes,
                                           offload_strategy, coeffs, speed))


def _gbs_problem(model: ModelSpec, hw: Hardware, world: int, gbs: int, seq: int) -> Problem:
    """No split of the GPUs has a DP that divides GBS: say which GBS values would work."""
    dps = sorted({world // (tp * pp * cp)
                  for tp in _divisors(model.num_attention_heads) if _tp_ok(model, hw, world, tp)
                  for pp in _divisors(model.num_layers) if world % (tp * pp) == 0
                  for cp in (1, 2, 4, 8, 16, 32)
                  if world % (tp * pp * cp) == 0 and (cp == 1 or seq % (2 * cp) == 0)})
    near = sorted({k * d for d in dps for k in (max(1, gbs // d), gbs // d + 1)},
                  key=lambda g: (abs(g - gbs), g))
    return Problem("error", "--gbs", f"gbs={gbs}: on {world} GPUs no split of {model.name} has a data-parallel size "
                                     f"that divides it (DP can be {', '.join(map(str, dps))}); GBS must be a multiple "
                                     f"of MBS x DP; nearest that works: {', '.join(f'--gbs {g}' for g in near[:2])}, "
                                     "or another --nodes")


def _with_relative(c: Candidate, top: float) -> Candidate:
    # explicit constructor: dataclasses.replace is ~10x slower and this runs for every candidate
    return Candidate(c.parallelism, c.recompute, c.strategy, c.fp8, c.peft, c.memory, c.capacity_gib,
                     c.host_capacity_gib, c.host_need_gib, c.tokens_per_s_per_gpu, c.score,
                     c.tokens_per_s_per_gpu / top)


def _nearest(possible: list[Candidate], name: str, value: object) -> list[Candidate]:
    """For each value of ``name`` closest to the pinned one (tp=3: tp=2 and tp=4), its best candidate."""
    fit = [c for c in possible if c.fits] or possible
    if not fit:
        return []
    if not isinstance(value, int) or isinstance(value, bool):
        return [max(fit, key=_rank_key)]
    dist = {c: abs(int(str(_cand_value(c, name))) - value) for c in fit}
    d0 = min(dist.values())
    best: dict[int, Candidate] = {}
    for c in fit:
        if dist[c] == d0:
            v = int(str(_cand_value(c, name)))
            if v not in best or _rank_key(c) > _rank_key(best[v]):
                best[v] = c
    return [best[v] for v in sorted(best)]


def _relax(universe: list[Candidate], pins: Pins, names: list[str]) -> tuple[tuple[str, ...], Candidate] | None:
    """The fastest fitting candidate that changes the fewest pinned knobs."""
    for k in range(1, len(names) + 1):
        options: list[tuple[tuple[str, ...], Candidate]] = []
        for drop in itertools.combinations(names, k):
            b = _best([c for c in universe if _matches(c, _unpin(pins, drop))])
            if b is not None:
                options.append((drop, b))
        if options:
            return max(options, key=lambda o: _rank_key(o[1]))
    return None


def _alternative_experiments(hw: Hardware, nodes: int, model: ModelSpec, gbs: int, seq: int, pins: Pins,
                             offload_strategy: Strategy, coeffs: MemoryCoefficients,
                             sc: SpeedCoefficients) -> list[str]:
    """LoRA and a smaller model, each with its predicted peak: one flag away, and a different experiment."""
    out: list[str] = []
    if (pins.peft or "none") != "lora":
        lora = _best(_enumerate(model, hw, nodes, gbs, seq, Pins(peft="lora", fp8=pins.fp8), offload_strategy,
                                coeffs, sc))
        if lora is not None:
            out.append(f"--peft lora (a different experiment: LoRA adapters on a frozen {model.name}; "
                       f"{lora.describe()})")
    smaller = [m for m in MODELS.values() if m.num_params() < model.num_params()]
    if smaller:
        small = max(smaller, key=lambda m: m.num_params())
        b = _best(_enumerate(small, hw, nodes, gbs, seq, Pins(fp8=pins.fp8), offload_strategy, coeffs, sc))
        if b is not None:
            out.append(f"--model {small.name} (a different experiment: a smaller model, full-parameter; "
                       f"{b.describe()})")
    return out


def _no_fit_problem(hw: Hardware, nodes: int, model: ModelSpec, gbs: int, seq: int, pins: Pins,
                    universe: list[Candidate], matching: list[Candidate], offload_strategy: Strategy,
                    coeffs: MemoryCoefficients, sc: SpeedCoefficients) -> Problem:
    names = _pinned_names(pins)
    closest = min(matching, key=lambda c: c.memory.total_gib)
    if names:
        alt = _relax(universe, pins, names)
        if alt is not None:
            drop, cand = alt
            pinned = ", ".join(_fmt_pin(n, _pin_value(pins, n)) for n in names)
            return Problem("error", " ".join(FLAGS[n] for n in drop),
                           f"{pinned}: nothing fits: smallest is {closest.describe()} ({closest.why_not()}); "
                           f"nearest that fits: {cand.describe()} (changing {', '.join(FLAGS[n] for n in drop)})")
    exp = "LoRA" if pins.peft == "lora" else "full-parameter"
    msg = (f"no configuration of {exp} {model.name} at GBS {gbs}, seq {seq} fits {nodes} x {hw.gpus_per_node} "
           f"{hw.gpu} ({hw.gpu_memory:.1f} GiB GPU, {hw.host_memory_gib:.0f} GiB host per node): the smallest is "
           f"{closest.describe()} ({closest.why_not()})")
    alts = _alternative_experiments(hw, nodes, model, gbs, seq, pins, offload_strategy, coeffs, sc)
    if hw.network != "none":
        alts.insert(0, "more --nodes (the same experiment)")
    if alts:
        msg += ". Options: " + "; ".join(alts)
    return Problem("error", "memory", msg)


def _explain(hw: Hardware, model: ModelSpec, pins: Pins, chosen: Candidate, matching: list[Candidate],
             universe: list[Candidate], gbs: int, seq: int, nodes: int, offload_strategy: Strategy,
             coeffs: MemoryCoefficients, sc: SpeedCoefficients) -> str:
    """Plain words: what was chosen and why; on a GPU too small for the experiment, what keeps it and what not."""
    p = chosen.parallelism
    n_fit = sum(1 for c in matching if c.fits)
    exp = "LoRA" if chosen.peft == "lora" else "full-parameter"
    lines = [f"Chose tp={p.tp} pp={p.pp} cp={p.cp} dp={p.dp} mbs={p.mbs} recompute={chosen.recompute} "
             f"(sequence parallel {'on' if p.sequence_parallel else 'off'}, distributed optimizer over DPxCP="
             f"{p.dp * p.cp}) for {exp} {model.name}, GBS {gbs}, seq {seq}: the fastest of {n_fit} fitting "
             f"candidates by the planner's throughput model (plans above {sc.tight_memory_fraction:.0%} of GPU "
             f"memory rank {sc.tight_memory_penalty:.0%} lower); predicted peak {chosen.memory.total_gib:.1f} of "
             f"{chosen.capacity_gib:.1f} GiB per GPU (strategy {chosen.strategy})."]
    if chosen.tight:
        opts = []
        if chosen.recompute != "full":
            opts.append("--recompute full")
        if p.mbs > 1:
            opts.append("--mbs 1")
        if p.world_size > 1:
            opts.append("a larger --tp or --cp")
        opts.append(f"a shorter --seq-length (activations {chosen.memory.activations_gib:.1f} GiB and logits "
                    f"{chosen.memory.logits_gib:.1f} GiB scale with it)")
        lines.append(f"Close call: the prediction is above {sc.tight_memory_fraction:.0%} of GPU memory, and the "
                     "memory model's coefficients are still to be fitted to measured peaks (training issue); if this "
                     "runs out of memory: " + ", ".join(opts) + ".")
    on_gpu = [c for c in matching if c.strategy == "gpu"]
    if chosen.offload and chosen.peft == "none":
        smallest_gpu = min((c for c in universe if c.strategy == "gpu"), key=lambda c: c.memory.total_gib,
                           default=None)
        why = ""
        if smallest_gpu is not None and not smallest_gpu.fits:
            why = (f" With optimizer state on the GPU it does not fit: the smallest such configuration needs "
                   f"{smallest_gpu.memory.total_gib:.1f} GiB.")
        mech = ("fp32 master weights and Adam moments are built and kept in host memory; the GPU holds bf16 weights "
                "and bf16 grads" if chosen.strategy == "host_master" else
                "megatron-core's optimizer_cpu_offload (HybridDeviceOptimizer); note its fp32 parameter copy on the "
                "GPU at setup")
        lines.append(f"This keeps the experiment: full-parameter continual pretraining of {model.name}, with the "
                     f"optimizer state on the host ({mech}; {chosen.host_need_gib:.0f} of {hw.host_memory_gib:.0f} "
                     f"GiB host memory) and recompute={chosen.recompute}.{why}")
        if chosen.strategy == "host_master":
            lines.append(MEASURED_HOST_MASTER)
        alts = _alternative_experiments(hw, nodes, model, gbs, seq, pins, offload_strategy, coeffs, sc)
        if alts:
            lines.append("Different experiments, one flag away: " + "; ".join(alts) + ".")
    elif on_gpu and chosen.recompute != "none":
        lines.append(f"Activation recompute '{chosen.recompute}' is needed: nothing faster fits.")
    if pins.peft == "lora":
        lines.append("LoRA was requested: this trains adapters on a frozen base model, a different experiment from "
                     "full-parameter CPT.")
    return "\n".join(lines)


def format_explain(choice: PlanChoice, limit: int = 20) -> str:
    """The ``cpt-launch plan --explain`` text: the explanation, then a table of candidates (best first)."""
    head = (f"{'#':>3}  {'tp':>2} {'pp':>2} {'cp':>2} {'dp':>3} {'mbs':>3}  {'recompute':<9}  {'optimizer':<17}  "
            f"{'GPU GiB':>7}  {'host GiB':>8}  {'fits':<4}  {'speed':>5}  note")
    n = len(choice.candidates)
    rows = [choice.explanation, "",
            f"Candidates ({n}; showing {min(limit, n)}, capacity {choice.chosen.capacity_gib:.1f} GiB per GPU):", head]
    for i, c in enumerate(choice.candidates[:limit], 1):
        p = c.parallelism
        note = "chosen" if c is choice.chosen else c.why_not()
        if c.fits and c.offload and not choice.chosen.offload:
            note = "offload is used only when nothing fits on the GPU"
        if c.fits and c.tight:
            note = (note + "; " if note else "") + f"near capacity (> {DEFAULT_SPEED.tight_memory_fraction:.0%})"
        rows.append(f"{i:>3}  {p.tp:>2} {p.pp:>2} {p.cp:>2} {p.dp:>3} {p.mbs:>3}  {c.recompute:<9}  {c.strategy:<17}  "
                    f"{c.memory.total_gib:>7.1f}  {c.host_need_gib:>8.0f}  {'yes' if c.fits else 'no':<4}  "
                    f"{c.relative_speed:>5.2f}  {note}")
    rows.append("speed: relative to the chosen configuration, from the planner's throughput model (a ranking, not a "
                "measurement); GPU GiB: predicted peak per GPU incl. fragmentation and workspace.")
    return "\n".join(rows)

