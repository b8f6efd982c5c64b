"""Job-side entrypoint: ``python -m recipes.entry {convert,train,export} --jobspec PATH [--validate-only]``.

The launcher starts one process per GPU around this (``torchrun --nproc-per-node N -m recipes.entry train ...`` on a
single node or locally, ``srun`` with one task per GPU on Slurm); the recipe runs in-process in each of them, and
Lightning picks up the rank from torchrun's or Slurm's environment variables.

``--validate-only`` builds the full recipe, reads every CPT value back and compares it with the spec, without CUDA
and without touching data or checkpoints. Exit codes: 0 ok, 2 the spec or the built recipe is wrong (every problem
printed), 4 the stage itself failed. Messages go to stderr; ``--validate-only`` prints its table to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from launcher.errors import EXIT_JOB_FAILED, EXIT_OK, EXIT_USAGE, ConfigError
from launcher.jobspec import JobSpec
from launcher.resume import decide_resume


def log(msg: str) -> None:
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(f"[recipes.entry] {msg}", file=sys.stderr, flush=True)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _apply_gpu_memory_cap(cap_gib: float | None) -> None:
    """Emulate a smaller GPU: the caching allocator refuses to grow past cap_gib on this process's device."""
    if not cap_gib:
        return
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    total = torch.cuda.get_device_properties(local).total_memory
    frac = min(1.0, cap_gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(frac, local)
    log(f"GPU memory capped at {cap_gib} GiB ({frac:.4f} of {total / 2**30:.1f} GiB) to emulate a smaller GPU")


def _patch_megatron_without_te() -> list[str]:
    """megatron-core 0.15 compares the Transformer Engine version in OptimizerConfig.__post_init__ even where TE is
    absent (``None >= Version`` -> TypeError) on the precision-aware / offload path. Without TE no version is at
    least anything: answer False. Applied only where TE does not import."""
    from recipes.sdpa import te_available

    if te_available():
        return []
    import megatron.core.optimizer as mopt
    import megatron.core.optimizer.optimizer_config as moc

    def no_te(*_a: Any, **_k: Any) -> bool:
        return False

    moc.is_te_min_version = no_te  # type: ignore[assignment]
    mopt.is_te_min_version = no_te  # type: ignore[attr-defined]
    done = ["megatron.core.optimizer.is_te_min_version -> False (no Transformer Engine)"]

    # Without TE/apex megatron-core falls back to torch.optim.AdamW, whose per-parameter state holds a 0-dim 'step'
    # tensor. The distributed optimizer already saves 'step' in param_groups for that case ("non-Apex/TE support"),
    # but its dp_reshardable sharded state dict also hands the per-param 'step' to a shape check meant for
    # [numel] tensors (AssertionError (torch.Size([]), 0, N) at the first checkpoint). Leave 'step' out of the
    # per-parameter tensors, and on load keep the optimizer's own 'step' where the checkpoint carries none.
    import torch
    from megatron.core.optimizer import distrib_optimizer as mdo
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer as DO

    if getattr(mdo, "HAVE_APEX_OR_TE", True):
        return done  # apex's FusedAdam keeps 'step' in param_groups: the fallback's problems below do not arise

    get_orig, set_orig = DO._get_main_param_and_optimizer_states, DO._set_main_param_and_optimizer_states

    def get_wo_step(self: Any, model_param: Any) -> Any:
        t = get_orig(self, model_param)
        st = t.get("step")
        if isinstance(st, torch.Tensor) and st.dim() == 0:
            t = {k: v for k, v in t.items() if k != "step"}
        return t

    def set_keep_step(self: Any, model_param: Any, tensors: Any) -> Any:
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            gi, go = self.model_param_group_index_map[model_param]
            st = self.optimizer.state[self.optimizer.param_groups[gi]["params"][go]].get("step")
            if st is not None:
                tensors = {**tensors, "step": st}
        return set_orig(self, model_param, tensors)

    # On resume, the sharded-state template is built from a fresh optimizer whose torch AdamW has no state yet:
    # megatron-core's state_dict() then asserts len(steps) == 1 over zero steps (seen on the H200 at the first
    # resume). A fresh optimizer has taken no step: template the param groups with step 0; the checkpoint's value
    # replaces it on load (load_state_dict re-creates each state's 'step' from param_groups).
    sd_orig = DO.state_dict

    def state_dict_fresh_ok(self: Any) -> Any:
        inner = self.optimizer.state_dict()
        if inner.get("state"):
            return sd_orig(self)
        sd: dict[str, Any] = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
        for g in sd["optimizer"]["param_groups"]:
            g.pop("params", None)
            g["step"] = 0
        if self.grad_scaler:
            sd["grad_scaler"] = self.grad_scaler.state_dict()
        return sd

    # On load, megatron-core (distrib_optimizer.py, load_state_dict: "steps" -> one torch.tensor) puts ONE 'step'
    # tensor into every parameter's state, and torch's load_state_dict keeps it uncopied. torch AdamW then adds 1
    # to it once per parameter per step: after a resume the step count races ahead and Adam's bias correction
    # is lost (the H200 resume drifted from the uninterrupted run from the second resumed step on). Give every
    # parameter its own step tensor, as a fresh AdamW has.
    ld_orig = DO.load_state_dict

    def load_state_dict_own_steps(self: Any, state_dict: Any) -> Any:
        out = ld_orig(self, state_dict)
        untie_adam_steps(self.optimizer)
        return out

    DO.load_state_dict = load_state_dict_own_steps  # type: ignore[method-assign]
    DO.state_dict = state_dict_fresh_ok  # type: ignore[method-assign]
    DO._get_main_param_and_optimizer_states = get_wo_step  # type: ignore[method-assign]
    DO._set_main_param_and_optimizer_states = set_keep_step  # type: ignore[method-assign]
    done.append("DistributedOptimizer (torch AdamW fallback): per-param 'step' kept out of the sharded optimizer "
                "state; fresh-optimizer state_dict() templated with step 0 for loading; one 'step' tensor per "
                "parameter after loading")
    return done


def untie_adam_steps(optimizer: Any) -> int:
    """Give every parameter's Adam state its own ``step`` tensor where several share one object (see
    ``_patch_megatron_without_te``); also inside a HybridDeviceOptimizer's sub-optimizers. Returns how many were
    untied."""
    import torch

    seen: set[int] = set()
    n = 0
    for opt in (optimizer, *getattr(optimizer, "sub_optimizers", ())):
        for st in getattr(opt, "state", {}).values():
            step = st.get("step") if isinstance(st, dict) else None
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    st["step"] = step.detach().clone()
                    n += 1
                seen.add(id(st["step"]))
    return n


def _shim_missing_resiliency_ext() -> str | None:
    """NeMo's NeMoLogger checks ``isinstance(cb, LocalCheckpointCallback)`` for every ModelCheckpoint callback,
    through ``safe_import('nvidia_resiliency_ext.ptl_resiliency.local_checkpoint_callback')``; where that import
    fails (seen on the H200 machine's carried stack) the check itself raises, and no run with checkpoints can start.
    We never use local checkpointing, so where the real module does not import, a stand-in with a class nothing is
    an instance of gives NeMo the answer it needs. Returns the import error (logged), None when the real one works."""
    name = "nvidia_resiliency_ext.ptl_resiliency.local_checkpoint_callback"
    try:
        importlib.import_module(name)
        return None
    except Exception as e:  # noqa: BLE001 - any import failure means the same here
        import types

        err = f"{type(e).__name__}: {e}"
        mod = types.ModuleType(name)

        class LocalCheckpointCallback:  # never instantiated: isinstance(x, LocalCheckpointCallback) is always False
            pass

        mod.LocalCheckpointCallback = LocalCheckpointCallback  # type: ignore[attr-defined]
        sys.modules[name] = mod
        return err


def _run_train(spec: JobSpec, validate_only: bool) -> int:
    t = spec.train
    decision = decide_resume(_listdir(t.checkpoint_dir), t.base_checkpoint or None, allow_random_init=t.random_init)
    log(f"resume: {decision.reason}")
    if not decision.ok:
        print(f"error: jobspec train.checkpoint_dir: {decision.reason}", file=sys.stderr)
        return EXIT_USAGE
    if decision.source == "random_init":
        log("*** NO BASE CHECKPOINT: weights are RANDOMLY INITIALISED (random_init=true; benchmark/test run) ***")

    if not validate_only:
        # before NeMo is imported: nemo_logger binds the module at import time
        err = _shim_missing_resiliency_ext()
        if err:
            log(f"compat: nvidia_resiliency_ext local checkpoint callback does not import ({err}); using a stand-in")
    from launcher.mix import mix_summary, resolve_train_spec
    from recipes.cpt import resolve_attention, train_recipe, train_recipe_checks

    # weights by tokens of JSONL inputs: known only now that the tokenize stage has written its stats.json
    try:
        t = resolve_train_spec(t)
    except (OSError, ValueError, KeyError) as e:  # no stats.json / .idx where the tokenize stage should have written
        print(f"error: jobspec train.blend: cannot resolve the weights by tokens: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_JOB_FAILED
    for line in mix_summary(t):
        log(f"data mix: {line}")
    log(f"training blend (Megatron data_prefix): {t.train_data}")
    attention = resolve_attention(t)
    log(f"attention: {attention} (spec: {t.attention})")
    recipe = train_recipe(t, attention)
    checks = train_recipe_checks(recipe, t, attention)
    bad = [c for c in checks if not c.ok]
    if validate_only:
        for c in checks:
            print(f"{'ok ' if c.ok else 'BAD'} {c.name:42s} recipe={c.got!r} spec={c.want!r}")
        if bad:
            print(f"error: {len(bad)} recipe value(s) differ from the spec", file=sys.stderr)
            return EXIT_USAGE
        log(f"validate-only: {len(checks)} values equal the spec; nothing was run")
        return EXIT_OK
    if bad:
        for c in bad:
            print(f"error: recipe {c.name}={c.got!r}, spec says {c.want!r}", file=sys.stderr)
        return EXIT_USAGE

    for p in _patch_megatron_without_te():
        log(f"compat: {p}")
    # The allocator reads PYTORCH_CUDA_ALLOC_CONF once, at CUDA's start: the stage script exports it (launcher.plan);
    # set here it came too late (7.04 GiB stayed reserved-but-unallocated at an OOM under the 47 GiB cap).
    log(f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '(unset)')}")
    _apply_gpu_memory_cap(t.gpu_memory_cap_gib)
    import fiddle as fdl

    _slurm_requeue_contract(recipe)
    task = fdl.build(recipe)
    if attention == "sdpa":
        # PreTrainingDataModule forces create_attention_mask=True when TE is missing; the causal SDPA ignores the
        # mask, so don't build a seq x seq boolean tensor per sample.
        task.keywords["data"].create_attention_mask = False
    task()
    return EXIT_OK


def _slurm_requeue_contract(recipe: Any) -> None:
    """The trainer's side of the sbatch template's requeue rule (launcher/sbatch.py).

    Slurm sends SIGUSR1 ``signal_seconds`` before the time limit: NeMo's PreemptionCallback then saves a checkpoint
    and stops training, the process exits 0, and the batch script requeues the job (within ``max_requeues``).
    Lightning's own SLURM handler would requeue from inside the job as well, so it is switched off: one rule, in
    one place.
    """
    if not os.environ.get("SLURM_JOB_ID"):
        return
    import signal

    import nemo_run as run
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from nemo.lightning.pytorch.callbacks import PreemptionCallback

    tr = recipe.trainer
    tr.callbacks = [*(tr.callbacks or []), run.Config(PreemptionCallback, sig=signal.SIGUSR1)]
    plugins = tr.plugins if isinstance(tr.plugins, list) else [tr.plugins] if tr.plugins is not None else []
    tr.plugins = [*plugins, run.Config(SLURMEnvironment, auto_requeue=False)]
    log("slurm: SIGUSR1 -> checkpoint and stop (PreemptionCallback); Lightning auto-requeue off")


def _run_convert(spec: JobSpec, validate_only: bool) -> int:
    out = Path(spec.convert.output_path)
    if not validate_only and not spec.convert.overwrite:  # decided before NeMo's ~20 s import
        if (out / "context").is_dir() and (out / "weights").is_dir():
            log(f"convert: {out} holds a converted checkpoint; keeping it (overwrite=false)")
            return EXIT_OK
        if out.exists():
            print(f"error: jobspec convert.output_path: {out} exists but is not a NeMo checkpoint (context/, "
                  "weights/); not writing over it: move it away", file=sys.stderr)
            return EXIT_USAGE
    from recipes.cpt import convert_recipe

    recipe = convert_recipe(spec.convert)
    if validate_only:
        print(recipe)
        return EXIT_OK
    import shutil

    import fiddle as fdl

    from recipes.hf_io import cpu_only_saves, hf_connectors_without_te

    # written beside the output and renamed when complete: a convert killed half-way leaves no directory that the
    # next attempt (or train's restore) would take for a checkpoint
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    recipe.output_path = str(partial)
    from launcher.bars import phase

    with hf_connectors_without_te(), cpu_only_saves(), \
            phase(f"[recipes.entry] convert: read {spec.convert.hf_model_dir}, write the NeMo checkpoint"):
        fdl.build(recipe)()
    if out.exists():  # overwrite=true
        shutil.rmtree(out)
    partial.rename(out)
    log(f"convert: {spec.convert.hf_model_dir} -> {out}")
    return EXIT_OK


EXPORT_SOURCE = "cpt_export_source.json"  # in the export directory: which checkpoint it was written from


def _run_export(spec: JobSpec, validate_only: bool) -> int:
    import json
    import shutil

    e = spec.export
    decision = decide_resume(_listdir(e.checkpoint_dir), None, allow_random_init=False)
    if decision.source != "own_checkpoint" or decision.path is None:
        print(f"error: jobspec export.checkpoint_dir: no finished checkpoint in {e.checkpoint_dir} "
              f"({decision.reason})", file=sys.stderr)
        return EXIT_USAGE
    ckpt = os.path.join(e.checkpoint_dir, decision.path)
    out = Path(e.output_path)
    if not validate_only and out.exists() and not e.overwrite:  # decided before NeMo's ~20 s import
        try:
            same = json.loads((out / EXPORT_SOURCE).read_text()).get("checkpoint") == decision.path
        except (OSError, ValueError, AttributeError):
            same = False
        if same:  # a --resume of a finished run: this export is of the newest checkpoint already
            log(f"export: {out} is already the export of {decision.path}; keeping it")
            return EXIT_OK
        print(f"error: jobspec export.output_path: {out} exists and is not the export of {decision.path}; not "
              "writing over it (move it away)", file=sys.stderr)
        return EXIT_USAGE
    from recipes.cpt import export_recipe

    steps = []
    if e.peft == "lora":  # adapters only: merged into the base weights first, next to the HF output
        from recipes.cpt import lora_merge_recipe

        merged = e.output_path.rstrip("/") + "-merged-nemo"
        log(f"export: merge LoRA adapters {ckpt} -> {merged}")
        steps.append(lora_merge_recipe(ckpt, merged))
        ckpt = merged
    log(f"export: {ckpt} -> {e.output_path}")
    steps.append(export_recipe(e, checkpoint=ckpt))
    if validate_only:
        for r in steps:
            print(r)
        return EXIT_OK
    import fiddle as fdl

    from recipes.hf_io import cpu_only_saves, hf_connectors_without_te

    partial = out.with_name(out.name + ".partial")  # renamed when complete, as in convert
    shutil.rmtree(partial, ignore_errors=True)
    steps[-1].output_path = str(partial)
    from launcher.bars import phase

    with hf_connectors_without_te(), cpu_only_saves():
        for i, r in enumerate(steps, 1):
            what = "merge the LoRA adapters" if i < len(steps) else f"read {ckpt}, write HF safetensors"
            with phase(f"[recipes.entry] export {i}/{len(steps)}: {what}"):
                fdl.build(r)()
    (partial / EXPORT_SOURCE).write_text(json.dumps({"checkpoint": decision.path}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log(f"export: wrote {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.entry", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["convert", "train", "export"])
    ap.add_argument("--jobspec", required=True, type=Path, help="the JobSpec JSON the launcher wrote")
    ap.add_argument("--validate-only", action="store_true", help="build and check the recipe; run nothing")
    a = ap.parse_args(argv)
    try:
        spec = JobSpec.from_json(a.jobspec.read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {a.jobspec}: cannot read the job spec: {e}", file=sys.stderr)
        return EXIT_USAGE
    run = {"train": _run_train, "convert": _run_convert, "export": _run_export}[a.stage]
    try:
        return run(spec, a.validate_only)
    except ConfigError as e:
        for p in e.problems:
            print(f"{a.jobspec}: {p}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        if a.validate_only:
            raise
        import traceback

        traceback.print_exc()
        return EXIT_JOB_FAILED


if __name__ == "__main__":
    sys.exit(main())
