"""For every shipped profile: the plan's job spec builds into NeMo-Run recipes whose values equal the plan.

This is the contract between the login node (plan, no NeMo) and the container (recipes): what `cpt-launch
--dry-run` shows is what the job will train with. Needs the [nemo] extra (CI installs it); no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.plan import Overrides, PlanContext, build_plan
from launcher.profiles import available_profiles, load_profile

pytestmark = pytest.mark.nemo
pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x: pip install -e '.[nemo]'")

from recipes import cpt  # noqa: E402
from recipes.entry import main as entry_main  # noqa: E402


def recipe_equal_to(t):  # type: ignore[no-untyped-def]
    """The train recipe built from a plan's TrainSpec, after asserting that every value read back equals the spec."""
    attention = cpt.resolve_attention(t)
    r = cpt.train_recipe(t, attention)
    bad = [c for c in cpt.train_recipe_checks(r, t, attention) if not c.ok]
    assert not bad, bad
    return r


@pytest.mark.parametrize("profile", available_profiles())
def test_every_recipe_of_every_profile_equals_the_plan(profile: str, tmp_path: Path) -> None:
    prof = load_profile(profile)
    plan = build_plan(prof, Overrides(nodes=prof.hardware.max_nodes if profile == "test-slurm" else None),
                      PlanContext(code_dir="/src", command="test", run_name="r"))
    spec = plan.jobspec
    t = spec.train
    r = recipe_equal_to(t)
    par = plan.parallelism
    st = r.trainer.strategy
    assert (st.tensor_model_parallel_size, st.pipeline_model_parallel_size, st.context_parallel_size) == (
        par.tp, par.pp, par.cp)
    assert r.trainer.num_nodes == plan.nodes and r.trainer.num_nodes * r.trainer.devices == plan.gpus
    assert (r.data.global_batch_size, r.data.micro_batch_size, r.data.seq_length) == (par.gbs, par.mbs, t.seq_length)
    assert r.data.paths["train"] == t.train_data and r.data.tokenizer.pretrained_model_name == t.tokenizer_dir
    assert r.optim.config.lr == 2.5e-5 and r.optim.lr_scheduler.min_lr == 2.5e-6
    assert r.optim.lr_scheduler.warmup_steps == 15 and r.trainer.max_steps == t.max_steps
    assert r.resume.resume_if_exists and r.resume.restore_config.path == t.base_checkpoint
    assert r.log.ckpt.dirpath == t.checkpoint_dir
    # the plan's offload decision reaches megatron's optimizer config
    assert r.optim.config.optimizer_cpu_offload is t.optimizer_offload
    # convert and export build too, on the plan's paths
    c = cpt.convert_recipe(spec.convert)
    e = cpt.export_recipe(spec.export, checkpoint=f"{t.checkpoint_dir}/last")
    assert c is not None and e is not None
    # and the job-side --validate-only accepts the plan's job spec as written
    js = tmp_path / "jobspec.json"
    js.write_text(spec.to_json())
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 0


def test_under_slurm_the_trainer_checkpoints_on_usr1_and_leaves_requeue_to_the_script(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import fiddle as fdl

    from recipes import entry

    plan = build_plan(load_profile("dgx-h100"), Overrides(nodes=1), PlanContext(code_dir="/s", command="t",
                                                                                 run_name="r"))
    r = cpt.train_recipe(plan.jobspec.train, cpt.resolve_attention(plan.jobspec.train))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    entry._slurm_requeue_contract(r)
    assert "PreemptionCallback" not in [type(c).__name__ for c in fdl.build(r.trainer.callbacks)]
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    entry._slurm_requeue_contract(r)
    cbs = {type(c).__name__: c for c in fdl.build(r.trainer.callbacks)}
    assert cbs["PreemptionCallback"].sig == signal.SIGUSR1
    envs = [p for p in fdl.build(r.trainer.plugins) if type(p).__name__ == "SLURMEnvironment"]
    assert len(envs) == 1 and envs[0].auto_requeue is False


def test_random_init_plan_builds_a_recipe_without_base_weights(tmp_path: Path) -> None:
    """--random-init (the GPU benchmarks' path through the launcher): the recipe keeps resume_if_exists for the
    run's own checkpoints but restores no base weights, and the job-side validation accepts it."""
    plan = build_plan(load_profile("workstation-48gb"),
                      Overrides(random_init=True, num_layers=8, model_dir="/bench/tokenizer", max_steps=40, gbs=8),
                      PlanContext(code_dir="/src", command="test", run_name="r"))
    t = plan.jobspec.train
    r = recipe_equal_to(t)
    assert r.resume.resume_if_exists and r.resume.restore_config is None
    assert r.model.config.num_layers == 8 and r.data.tokenizer.pretrained_model_name == "/bench/tokenizer"
    js = tmp_path / "jobspec.json"
    js.write_text(plan.jobspec.to_json())
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 0


@pytest.mark.parametrize("profile", ["workstation-48gb", "dgx-h100"])
def test_lora_is_one_flag_away_and_builds(profile: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--peft lora (a different experiment): the same recipe through llm.finetune with NeMo's LoRA defaults, no
    distributed optimizer and no fused cross entropy (as NeMo's own LoRA recipes); the plan and the recipe agree,
    the job-side validation accepts it, and export merges the adapters before writing HF format."""
    from nemo.collections import llm

    prof = load_profile(profile)
    plan = build_plan(prof, Overrides(peft="lora"), PlanContext(code_dir="/src", command="test", run_name="r"))
    t = plan.jobspec.train
    assert t.peft == "lora" and not t.optimizer_offload and not plan.parallelism.distributed_optimizer
    r = recipe_equal_to(t)
    assert r.__fn_or_cls__ is llm.finetune and r.peft.dim == 32 and r.model.config.cross_entropy_loss_fusion is False
    assert r.resume.restore_config.path == t.base_checkpoint  # the frozen base comes from the converted model
    js = tmp_path / "jobspec.json"
    spec = plan.jobspec
    # export: a finished checkpoint of the run, as NeMo names it (the directory need only exist for the decision)
    ckdir = tmp_path / "ckpt"
    (ckdir / "r--step=149-consumed_samples=153600.0-last").mkdir(parents=True)
    import dataclasses

    spec = dataclasses.replace(spec, export=dataclasses.replace(spec.export, checkpoint_dir=str(ckdir)))
    js.write_text(spec.to_json())
    assert entry_main(["train", "--jobspec", str(js), "--validate-only"]) == 0
    capsys.readouterr()
    assert entry_main(["export", "--jobspec", str(js), "--validate-only"]) == 0
    out = capsys.readouterr()
    assert "merge_lora" in out.out and "export_ckpt" in out.out
    assert f"{spec.export.output_path}-merged-nemo" in out.out


@pytest.mark.parametrize("profile,model,nodes", [("workstation-48gb", "llama3.2-1b", None),
                                                 ("dgx-h100", "llama3.2-1b", None),
                                                 ("dgx-h100", "llama3.1-70b", 4)])
def test_the_other_models_build_into_recipes_that_equal_the_plan(profile: str, model: str, nodes: int | None) -> None:
    """`--model` (a smaller model is the planner's other 'different experiment'; 70B needs TP and PP): NeMo's own
    recipe module for each, with the plan's values."""
    plan = build_plan(load_profile(profile), Overrides(model=model, nodes=nodes),
                      PlanContext(code_dir="/src", command="test", run_name="r"))
    t = plan.jobspec.train
    r = recipe_equal_to(t)
    assert r.model.config.num_layers == plan.model.num_layers
    assert r.model.config.hidden_size == plan.model.hidden_size
