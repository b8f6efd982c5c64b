"""What a job inside the container needs to know, as plain JSON-able dataclasses.

The launcher's plan writes one ``JobSpec`` per run (``<run_dir>/jobspec.json``); the job-side entrypoints
(``python -m recipes.entry {convert,train,export}``) read it back. It is the one contract between the login
node (no NeMo, no torch) and the container (NeMo). Paths in it are *container* paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Recompute = Literal["none", "selective", "full"]
# te: Transformer Engine (real NGC containers); sdpa: torch SDPA (no TE); auto: te if importable at job time
Attention = Literal["te", "sdpa", "auto"]


@dataclass(frozen=True)
class Parallelism:
    """How the world is split. tp*pp*cp*dp == world size."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    mbs: int = 1
    gbs: int = 1024
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    virtual_pp: int | None = None

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def grad_accum(self) -> int:
        return self.gbs // (self.mbs * self.dp)


@dataclass(frozen=True)
class Optim:
    """The seed's CPT optimizer and schedule (AdamW, cosine)."""

    lr: float = 2.5e-5
    min_lr: float = 2.5e-6
    warmup_steps: int = 15
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass(frozen=True)
class BlendPart:
    """One dataset of the training mix. ``weight`` None: proportional to its tokens (Megatron's default), resolved
    when they are known -- at pre-flight for prepared prefixes, in the job (from ``stats``) for JSONL inputs
    tokenized after planning (``launcher.mix.resolve_train_spec``)."""

    prefix: str  # Megatron prefix (..._text_document) as the job sees it
    weight: float | None = None  # as given: a share; None = proportional to tokens
    tokens: int | None = None  # None: not known yet (written by the tokenize stage)
    stats: str | None = None  # the tokenize stage's <prefix>.stats.json, where the job reads the tokens
    source: str = ""  # the item as the user wrote it ("--data 0.9:ja/*.jsonl"), for messages
    share: float | None = None  # normalised weight (sum 1 over the blend), once resolvable
    epochs: float | None = None  # passes over this dataset that max_steps x gbs x seq tokens take


@dataclass(frozen=True)
class ValidSet:
    """One named validation set (``--valid-data ja=...``): one validation loss per set."""

    name: str  # [A-Za-z0-9_-]{1,32}; "valid" for unnamed inputs
    data: list[str] = field(default_factory=list)  # Megatron prefixes, blended by size when several


@dataclass(frozen=True)
class TrainSpec:
    """Everything the train recipe sets explicitly (never the NeMo recipe's pretraining defaults)."""

    model: str = "llama3.1-8b"  # a key of launcher.models.MODELS
    num_layers: int | None = None  # override (GPU tests on fewer layers); None = the model's own
    num_nodes: int = 1
    gpus_per_node: int = 8
    parallelism: Parallelism = field(default_factory=Parallelism)
    optim: Optim = field(default_factory=Optim)
    seq_length: int = 8192
    max_steps: int = 150
    val_check_interval: int = 15
    limit_val_batches: int = 8
    ckpt_every_n_steps: int = 15
    ckpt_async_save: bool = True  # write checkpoints in the background (NeMo's default); False: the step waits
    ckpt_keep: int = 2  # newest checkpoints kept (plus the -last link); 8B with optimizer state is ~104 GiB each
    precision: Literal["bf16-mixed"] = "bf16-mixed"
    fp8: bool = False
    recompute: Recompute = "none"
    recompute_num_layers: int | None = None
    optimizer_offload: bool = False
    offload_fraction: float = 1.0
    grad_reduce_in_fp32: bool = True  # fp32 main-grad buffer (4 B/param); False: bf16 grads (2 B/param, workstation)
    gpu_memory_cap_gib: float | None = None  # emulate a smaller GPU (torch.cuda.set_per_process_memory_fraction)
    peft: Literal["none", "lora"] = "none"
    attention: Attention = "te"
    # data: weighted blend, Megatron style: [w1, prefix1, w2, prefix2, ...] or [prefix]. Written by the plan when
    # every weight is known; [] when the job resolves it from ``blend`` at train start (tokens known only then).
    train_data: list[Any] = field(default_factory=list)
    blend: list[BlendPart] = field(default_factory=list)  # the training mix (source of train_data)
    valid_data: list[Any] = field(default_factory=list)  # the first validation set's prefixes (NeMo's one blend)
    # every validation set, in order; the first is valid_data and its loss is also "val_loss". [] = one set,
    # "valid", of valid_data
    valid_sets: list[ValidSet] = field(default_factory=list)
    test_data: list[Any] = field(default_factory=list)
    tokenizer_dir: str = ""  # HF tokenizer directory (the downloaded model dir)
    base_checkpoint: str = ""  # converted NeMo checkpoint of the base model (restore_config)
    random_init: bool = False  # no base checkpoint: start from random weights (tests/benchmarks only; logged loudly)
    checkpoint_dir: str = ""  # this run's own checkpoints (resume_if_exists)
    log_dir: str = ""
    step_log: str = ""  # one JSON line per train step and per validation, appended across attempts ("" = log_dir's)
    run_name: str = "cpt"
    tensorboard: bool = True
    wandb_project: str | None = None  # WANDB_API_KEY comes from the environment, never from here
    seed: int = 1234


def validation_sets(spec: TrainSpec) -> list[ValidSet]:
    """The validation sets in order; a spec without ``valid_sets`` has one, "valid", of ``valid_data``."""
    return list(spec.valid_sets) or [ValidSet("valid", list(spec.valid_data))]


@dataclass(frozen=True)
class ConvertSpec:
    model: str = "llama3.1-8b"
    num_layers: int | None = None  # the HF model's layers where it is a cut-down one (tests); None = the model's own
    hf_model_dir: str = ""
    output_path: str = ""  # the NeMo checkpoint directory train restores from
    overwrite: bool = False


@dataclass(frozen=True)
class ExportSpec:
    model: str = "llama3.1-8b"
    num_layers: int | None = None
    checkpoint_dir: str = ""  # the run's checkpoint dir; the latest checkpoint in it is exported
    output_path: str = ""
    overwrite: bool = False
    peft: Literal["none", "lora"] = "none"  # lora: merge the adapters into the base weights first


@dataclass(frozen=True)
class JobSpec:
    train: TrainSpec
    convert: ConvertSpec
    export: ExportSpec

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        d = json.loads(text)
        t = dict(d["train"])
        t["parallelism"] = Parallelism(**t["parallelism"])
        t["optim"] = Optim(**t["optim"])
        t["blend"] = [BlendPart(**b) for b in t.get("blend", [])]
        t["valid_sets"] = [ValidSet(**v) for v in t.get("valid_sets", [])]
        return cls(train=TrainSpec(**t), convert=ConvertSpec(**d["convert"]), export=ExportSpec(**d["export"]))
