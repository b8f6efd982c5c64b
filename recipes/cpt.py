"""NeMo 2 recipes for the three job-side stages, built from the launcher's JobSpec (``launcher.jobspec``).

Each function returns a NeMo-Run ``run.Partial`` (not yet built): ``convert_recipe`` -> ``llm.import_ckpt``,
``train_recipe`` -> ``llm.pretrain`` via ``llm.<model>.pretrain_recipe``, ``export_recipe`` -> ``llm.export_ckpt``.
The NeMo recipe's own defaults are *pretraining* ones (TP1/CP2, GBS 512, lr 3e-4, mock data, a cosine schedule that
ends after 10 steps); every CPT setting is therefore set here explicitly from the spec, and ``check_train_recipe``
reads them back so that ``--validate-only`` and the tests can prove the built config equals the spec.

Importing this module imports NeMo (~20 s): the launcher never imports it, only the job does.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Literal

import nemo_run as run
import torch

from launcher.errors import ConfigError, Problem
from launcher.jobspec import ConvertSpec, ExportSpec, TrainSpec, validation_sets
from launcher.models import get_model
from launcher.specchecks import ResolvedAttention, train_spec_problems  # noqa: F401 (re-exported)
from recipes.sdpa import sdpa_forward_step, sdpa_layer_spec, te_available

def ckpt_filename(run_name: str) -> str:
    """``<run>--step=N-consumed_samples=M``: launcher.resume reads the step=N (NeMo's ``{model_name}`` placeholder
    rendered as ``model_name=0`` on the H200 run, so the run name is written in)."""
    return f"{run_name}--{{step}}-{{consumed_samples}}"


def resolve_attention(spec: TrainSpec) -> ResolvedAttention:
    """``auto`` -> te where Transformer Engine imports (NGC containers), else sdpa. Decided at job time."""
    if spec.attention == "auto":
        return "te" if te_available() else "sdpa"
    return spec.attention


def _data_paths(spec: TrainSpec) -> dict[str, list[Any]]:
    """Explicit per-split blends: train may be weighted, validation (the first validation set) and test are
    prefixes. Test defaults to validation. ``train_data`` must be resolved (``launcher.mix.resolve_train_spec``)."""
    first = validation_sets(spec)[0].data
    if not spec.train_data and spec.blend:
        raise ConfigError([Problem("error", "jobspec train.train_data",
                                   "empty: the blend's weights are by tokens and not resolved yet; resolve them "
                                   "with launcher.mix.resolve_train_spec (recipes.entry does, at train start)")])
    return {
        "train": list(spec.train_data),
        "validation": list(first),
        "test": list(spec.test_data or first),
    }


def _validation_sets(spec: TrainSpec) -> list[list[Any]]:
    """``[[name, [prefix, ...]], ...]``: what recipes.data.NamedValidationDataModule takes."""
    return [[v.name, list(v.data)] for v in validation_sets(spec)]


def hooks_without_dataloader_idx(cls: type) -> list[str]:
    """Validation batch hooks of a callback class that would fail with several validation dataloaders: Lightning
    then passes ``dataloader_idx`` positionally (e.g. NeMo's GarbageCollectionCallback does not take it)."""
    import inspect

    bad = []
    for hook in ("on_validation_batch_start", "on_validation_batch_end"):
        fn = getattr(cls, hook, None)
        if fn is not None and "dataloader_idx" not in inspect.signature(fn).parameters:
            bad.append(f"{cls.__name__}.{hook}")
    return bad


def _sdpa_model_config(mc: Any) -> None:
    """megatron-core local layers + SDPA core attention; the TE/apex-only fusions off (see recipes.sdpa). Without
    TE megatron-core refuses a config that asks for them (``apply_rope_fusion is not available``), so convert and
    export, which build the same model, need this too."""
    mc.transformer_layer_spec = sdpa_layer_spec
    mc.forward_step_fn = sdpa_forward_step
    mc.apply_rope_fusion = False
    mc.masked_softmax_fusion = False
    mc.gradient_accumulation_fusion = False
    mc.persist_layer_norm = False
    mc.bias_activation_fusion = True
    mc.bias_dropout_fusion = True
    mc.cross_entropy_loss_fusion = True


def _recipe_module(model_name: str) -> Any:
    return importlib.import_module(f"nemo.collections.llm.recipes.{get_model(model_name).nemo_recipe}")


# ----------------------------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------------------------
def train_recipe(spec: TrainSpec, attention: ResolvedAttention | None = None) -> run.Partial:
    """``llm.pretrain`` for continual pretraining, every CPT setting explicit. Raises ConfigError on a bad spec."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig
    from nemo import lightning as nl
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer
    from nemo.lightning.pytorch.optim import CosineAnnealingScheduler, MegatronOptimizerModule
    from nemo.lightning.pytorch.plugins.mixed_precision import MegatronMixedPrecision
    from nemo.lightning.pytorch.strategies.utils import RestoreConfig

    attention = attention or resolve_attention(spec)
    problems = train_spec_problems(spec, attention)
    if any(pr.severity == "error" for pr in problems):
        raise ConfigError(problems)
    p, o, m = spec.parallelism, spec.optim, get_model(spec.model)

    recipe = _recipe_module(spec.model).pretrain_recipe(
        name=spec.run_name, dir=spec.log_dir, num_nodes=spec.num_nodes, num_gpus_per_node=spec.gpus_per_node
    )

    # --- model -------------------------------------------------------------------------------------------------
    mc = recipe.model.config
    mc.seq_length = spec.seq_length
    if spec.num_layers is not None:
        mc.num_layers = spec.num_layers
    if spec.recompute == "none":
        mc.recompute_granularity = None
        mc.recompute_method = None
        mc.recompute_num_layers = None
    elif spec.recompute == "selective":
        mc.recompute_granularity = "selective"
        mc.recompute_method = None
        mc.recompute_num_layers = None
    else:
        mc.recompute_granularity = "full"
        mc.recompute_method = "uniform"
        mc.recompute_num_layers = spec.recompute_num_layers or 1
    if attention == "sdpa":
        _sdpa_model_config(mc)

    # --- trainer / strategy ------------------------------------------------------------------------------------
    tr = recipe.trainer
    tr.num_nodes = spec.num_nodes
    tr.devices = spec.gpus_per_node
    tr.max_steps = spec.max_steps
    tr.val_check_interval = spec.val_check_interval
    tr.limit_val_batches = spec.limit_val_batches
    tr.limit_test_batches = spec.limit_val_batches
    tr.log_every_n_steps = 1
    tr.accumulate_grad_batches = 1  # gradient accumulation is gbs/(mbs*dp), done by Megatron, not Lightning
    tr.plugins = run.Config(
        MegatronMixedPrecision,
        precision=spec.precision,
        params_dtype=torch.bfloat16,
        pipeline_dtype=torch.bfloat16,
        autocast_enabled=False,
        grad_reduce_in_fp32=spec.grad_reduce_in_fp32,
    )
    st = tr.strategy
    st.tensor_model_parallel_size = p.tp
    st.pipeline_model_parallel_size = p.pp
    st.context_parallel_size = p.cp
    st.sequence_parallel = p.sequence_parallel
    st.virtual_pipeline_model_parallel_size = p.virtual_pp
    st.pipeline_dtype = torch.bfloat16 if p.pp > 1 else None
    st.ckpt_async_save = spec.ckpt_async_save
    st.ckpt_parallel_load = True
    st.ddp = run.Config(
        DistributedDataParallelConfig,
        check_for_nan_in_grad=True,
        grad_reduce_in_fp32=spec.grad_reduce_in_fp32,
        overlap_grad_reduce=True,
        overlap_param_gather=True,
        average_in_collective=True,
        use_distributed_optimizer=p.distributed_optimizer,
    )

    # --- data ----------------------------------------------------------------------------------------------------
    from recipes.data import NamedValidationDataModule

    recipe.data = run.Config(
        NamedValidationDataModule,  # NeMo's PreTrainingDataModule, one validation dataloader per named set
        paths=_data_paths(spec),
        validation_sets=_validation_sets(spec),
        seq_length=spec.seq_length,
        micro_batch_size=p.mbs,
        global_batch_size=p.gbs,
        tokenizer=run.Config(AutoTokenizer, pretrained_model_name=spec.tokenizer_dir, use_fast=True),
        split=None,  # the splits are the explicit paths above
        seed=spec.seed,
        num_workers=4,
        # SDPA is causal by construction; without TE, NeMo would otherwise build an 8192x8192 mask per sample.
        create_attention_mask=False,
    )

    # --- optimizer: the seed's AdamW + cosine -------------------------------------------------------------------
    offload = spec.optimizer_offload
    recipe.optim = run.Config(
        MegatronOptimizerModule,
        config=run.Config(
            OptimizerConfig,
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=True,
            fp16=False,
            use_distributed_optimizer=p.distributed_optimizer,
            optimizer_cpu_offload=offload,
            optimizer_offload_fraction=spec.offload_fraction if offload else 0.0,
            # Host-side master weights: with the precision-aware path megatron-core hands the bf16 params to
            # HybridDeviceOptimizer, which builds the fp32 master + Adam state on the host, one tensor at a time.
            # Without it the DistributedOptimizer first clones an fp32 copy of all params ON THE GPU (29.9 GiB
            # for 8B), which is what ran out of memory under the 48 GB cap (../shared/device/README.md).
            use_precision_aware_optimizer=offload,
            overlap_cpu_optimizer_d2h_h2d=offload,
            pin_cpu_grads=True,
            pin_cpu_params=True,
        ),
        lr_scheduler=run.Config(
            CosineAnnealingScheduler,
            max_steps=spec.max_steps,  # the recipe leaves NeMo's default (10): the schedule must span the run
            warmup_steps=o.warmup_steps,
            constant_steps=0,
            min_lr=o.min_lr,
        ),
    )

    # --- logging and checkpoints -------------------------------------------------------------------------------
    from recipes.callbacks import FlagCheckpoint, StepStats

    ckpt = run.Config(
        FlagCheckpoint,  # saves every ckpt_every_n_steps and at the end; never because validation ran
        dirpath=spec.checkpoint_dir,
        filename=ckpt_filename(spec.run_name),
        monitor="step",
        mode="max",
        save_top_k=spec.ckpt_keep,
        save_last="link",  # the -last entry is a link to the newest checkpoint, not a second copy
        every_n_train_steps=spec.ckpt_every_n_steps,
        train_time_interval=None,
        save_on_train_epoch_end=False,
        save_optim_on_train_end=True,
    )
    tb = (run.Config(TensorBoardLogger, save_dir="tb_logs", name=spec.run_name)  # NeMoLogger puts it under log_dir
          if spec.tensorboard else None)
    # W&B: the key comes from the environment (WANDB_API_KEY) only; WANDB_MODE=offline works without a network.
    wb = (run.Config(WandbLogger, project=spec.wandb_project, name=spec.run_name,
                     save_dir="wandb")
          if spec.wandb_project else None)
    recipe.log = run.Config(
        nl.NeMoLogger,
        name=spec.run_name,
        log_dir=spec.log_dir,
        explicit_log_dir=spec.log_dir,
        use_datetime_version=False,
        ckpt=ckpt,
        tensorboard=tb,
        wandb=wb,
    )

    # --- resume: own latest checkpoint, else the base weights (launcher.resume.decide_resume is the same rule) ----
    restore = (run.Config(RestoreConfig, path=spec.base_checkpoint, load_model_state=True, load_optim_state=False,
                          load_artifacts=False)
               if spec.base_checkpoint else None)
    recipe.resume = run.Config(
        nl.AutoResume,
        restore_config=restore,
        resume_from_directory=spec.checkpoint_dir,
        resume_if_exists=True,
        resume_ignore_no_checkpoint=True,
        resume_past_end=False,
    )

    # --- callbacks ---------------------------------------------------------------------------------------------
    tokens_per_step = p.gbs * spec.seq_length
    layers = spec.num_layers or m.num_layers
    flops_per_token = _scaled_model(spec.model, layers).flops_per_token(spec.seq_length, causal=True)
    tr.callbacks = [
        *(tr.callbacks or []),
        run.Config(StepStats, tokens_per_step=tokens_per_step, flops_per_token=flops_per_token,
                   world_size=p.world_size, val_sets=[v.name for v in validation_sets(spec)],
                   log_path=spec.step_log or os.path.join(spec.log_dir, "step_stats.jsonl")),
    ]
    if spec.peft == "lora":
        return _as_lora(recipe)
    return recipe


# LoRA (``--peft lora``, a different experiment: adapters on a frozen base). NeMo's LoRA defaults (dim 32, alpha 32,
# the four linear layers): what launcher.memory assumes (MemoryCoefficients.lora_rank).
LORA_DIM = 32
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def _as_lora(recipe: run.Partial) -> run.Partial:
    """The same recipe through ``llm.finetune`` with a LoRA transform: the frozen base comes from the same
    restore_config, the data, schedule, checkpoints and resume rule are unchanged. As in NeMo's own LoRA recipes,
    the distributed optimizer and the fused cross entropy are off (the latter "does not function correctly with
    LoRA"); the learning rate stays the plan's."""
    from nemo.collections import llm
    from nemo.collections.llm.peft.lora import LoRA

    recipe.model.config.cross_entropy_loss_fusion = False
    recipe.optim.config.use_distributed_optimizer = False
    recipe.trainer.strategy.ddp.use_distributed_optimizer = False
    return run.Partial(
        llm.finetune, model=recipe.model, data=recipe.data, trainer=recipe.trainer, log=recipe.log,
        resume=recipe.resume, optim=recipe.optim, tokenizer="data",
        peft=run.Config(LoRA, dim=LORA_DIM, alpha=LORA_DIM, target_modules=list(LORA_TARGETS)),
    )


def _scaled_model(name: str, layers: int) -> Any:
    from dataclasses import replace

    return replace(get_model(name), num_layers=layers)


# ----------------------------------------------------------------------------------------------------------------
# convert / export
# ----------------------------------------------------------------------------------------------------------------
def convert_recipe(spec: ConvertSpec) -> run.Partial:
    """HF model directory -> NeMo 2 checkpoint at spec.output_path (what train's base_checkpoint points to)."""
    from nemo.collections import llm

    probs = []
    if not spec.hf_model_dir:
        probs.append(Problem("error", "jobspec convert.hf_model_dir", "empty; give the downloaded HF model dir"))
    if not spec.output_path:
        probs.append(Problem("error", "jobspec convert.output_path", "empty; train.base_checkpoint reads it"))
    if probs:
        raise ConfigError(probs)
    model = _recipe_module(spec.model).model()  # run.Config(LlamaModel, config=Llama31Config8B)
    if spec.num_layers is not None:  # a cut-down HF model (tests): the NeMo config must have its layers
        model.config.num_layers = spec.num_layers
    if not te_available():
        _sdpa_model_config(model.config)
    return run.Partial(llm.import_ckpt, model=model, source=f"hf://{spec.hf_model_dir}",
                       output_path=spec.output_path, overwrite=spec.overwrite)


def export_recipe(spec: ExportSpec, checkpoint: str | None = None) -> run.Partial:
    """The run's latest checkpoint (``checkpoint``: resolved at job time from spec.checkpoint_dir) -> HF format."""
    from nemo.collections import llm

    probs = []
    if not spec.checkpoint_dir and not checkpoint:
        probs.append(Problem("error", "jobspec export.checkpoint_dir", "empty"))
    if not spec.output_path:
        probs.append(Problem("error", "jobspec export.output_path", "empty"))
    if probs:
        raise ConfigError(probs)
    return run.Partial(llm.export_ckpt, path=checkpoint or spec.checkpoint_dir, target="hf",
                       output_path=spec.output_path, overwrite=spec.overwrite)


def lora_merge_recipe(checkpoint: str, merged_path: str) -> run.Partial:
    """A LoRA run's checkpoint holds the adapters only: merge them into the base weights (a NeMo checkpoint at
    ``merged_path``) before ``export_recipe`` writes HF format."""
    from nemo.collections import llm

    return run.Partial(llm.peft.merge_lora, lora_checkpoint_path=checkpoint, output_path=merged_path)


# ----------------------------------------------------------------------------------------------------------------
# Read the built recipe back: does it say what the spec says?
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    got: Any
    want: Any

    @property
    def ok(self) -> bool:
        return self.got == self.want


def train_recipe_checks(recipe: run.Partial, spec: TrainSpec, attention: ResolvedAttention) -> list[Check]:
    """Values in the recipe next to the spec's. Works on the unbuilt ``run.Partial`` (no CUDA, no files)."""
    p, o = spec.parallelism, spec.optim
    st, mc, d = recipe.trainer.strategy, recipe.model.config, recipe.data
    oc, sch, res = recipe.optim.config, recipe.optim.lr_scheduler, recipe.resume
    tok = d.tokenizer
    checks = [
        Check("tp", st.tensor_model_parallel_size, p.tp),
        Check("pp", st.pipeline_model_parallel_size, p.pp),
        Check("cp", st.context_parallel_size, p.cp),
        Check("sp", st.sequence_parallel, p.sequence_parallel),
        Check("vpp", st.virtual_pipeline_model_parallel_size, p.virtual_pp),
        Check("dp (world/(tp*pp*cp))",
              recipe.trainer.devices * recipe.trainer.num_nodes // (p.tp * p.pp * p.cp), p.dp),
        Check("num_nodes", recipe.trainer.num_nodes, spec.num_nodes),
        Check("devices", recipe.trainer.devices, spec.gpus_per_node),
        Check("gbs", d.global_batch_size, p.gbs),
        Check("mbs", d.micro_batch_size, p.mbs),
        Check("seq (data)", d.seq_length, spec.seq_length),
        Check("seq (model)", mc.seq_length, spec.seq_length),
        Check("num_layers", mc.num_layers, spec.num_layers or get_model(spec.model).num_layers),
        Check("data paths", d.paths, _data_paths(spec)),
        Check("validation sets (one loss each)", d.validation_sets, _validation_sets(spec)),
        Check("step log set names", next((c.val_sets for c in recipe.trainer.callbacks
                                          if getattr(getattr(c, "__fn_or_cls__", None), "__name__", "") == "StepStats"), None),
              [v.name for v in validation_sets(spec)]),
        Check("callbacks take dataloader_idx (several validation sets)",
              [h for c in recipe.trainer.callbacks for h in hooks_without_dataloader_idx(c.__fn_or_cls__)]
              if len(validation_sets(spec)) > 1 else [], []),
        Check("data split (unused with per-split paths)", d.split, None),
        Check("tokenizer class", getattr(getattr(tok, "__fn_or_cls__", None), "__name__", None), "AutoTokenizer"),
        Check("tokenizer dir", tok.pretrained_model_name, spec.tokenizer_dir),
        Check("lr", oc.lr, o.lr),
        Check("min_lr", sch.min_lr, o.min_lr),
        Check("warmup", sch.warmup_steps, o.warmup_steps),
        Check("schedule max_steps", sch.max_steps, spec.max_steps),
        Check("weight_decay", oc.weight_decay, o.weight_decay),
        Check("betas", (oc.adam_beta1, oc.adam_beta2), (o.adam_beta1, o.adam_beta2)),
        Check("clip_grad", oc.clip_grad, o.clip_grad),
        Check("distributed optimizer", oc.use_distributed_optimizer, p.distributed_optimizer),
        Check("bf16", (oc.bf16, recipe.trainer.plugins.precision), (True, spec.precision)),
        Check("optimizer offload", (oc.optimizer_cpu_offload, oc.optimizer_offload_fraction),
              (spec.optimizer_offload, spec.offload_fraction if spec.optimizer_offload else 0.0)),
        Check("grad_reduce_in_fp32", (st.ddp.grad_reduce_in_fp32, recipe.trainer.plugins.grad_reduce_in_fp32),
              (spec.grad_reduce_in_fp32, spec.grad_reduce_in_fp32)),
        Check("recompute", mc.recompute_granularity, None if spec.recompute == "none" else spec.recompute),
        Check("max_steps", recipe.trainer.max_steps, spec.max_steps),
        Check("val_check_interval", recipe.trainer.val_check_interval, spec.val_check_interval),
        Check("limit_val_batches", recipe.trainer.limit_val_batches, spec.limit_val_batches),
        Check("ckpt every n steps", recipe.log.ckpt.every_n_train_steps, spec.ckpt_every_n_steps),
        Check("ckpt dir", recipe.log.ckpt.dirpath, spec.checkpoint_dir),
        Check("ckpt async", st.ckpt_async_save, spec.ckpt_async_save),
        Check("resume_if_exists", res.resume_if_exists, True),
        Check("resume_ignore_no_checkpoint", res.resume_ignore_no_checkpoint, True),
        Check("resume dir", res.resume_from_directory, spec.checkpoint_dir),
        Check("restore base", res.restore_config.path if res.restore_config is not None else None,
              spec.base_checkpoint or None),
        Check("tensorboard", recipe.log.tensorboard is not None, spec.tensorboard),
        Check("wandb", recipe.log.wandb is not None, bool(spec.wandb_project)),
    ]
    if attention == "sdpa":
        checks += [
            Check("layer spec", mc.transformer_layer_spec, sdpa_layer_spec),
            Check("forward step", mc.forward_step_fn, sdpa_forward_step),
            Check("no TE fusions", (mc.apply_rope_fusion, mc.masked_softmax_fusion, mc.gradient_accumulation_fusion),
                  (False, False, False)),
        ]
    lora = spec.peft == "lora"
    peft = getattr(recipe, "peft", None) if recipe.__fn_or_cls__.__name__ == "finetune" else None
    checks += [
        Check("entry point", recipe.__fn_or_cls__.__name__, "finetune" if lora else "pretrain"),
        Check("LoRA", (peft.dim, peft.alpha, list(peft.target_modules)) if peft is not None else None,
              (LORA_DIM, LORA_DIM, list(LORA_TARGETS)) if lora else None),
    ]
    if lora:
        checks.append(Check("LoRA: fused cross entropy off", mc.cross_entropy_loss_fusion, False))
    return checks
