"""Pure planning: stages, resources, parallelism, paths and scripts, with no side effects."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.plan import Overrides, PlanContext, build_plan
from launcher.profiles import load_profile

CTX = PlanContext(code_dir="/src/cpt-launch", command="cpt-launch --cluster dgx-h100 --nodes 4", run_name="r1")
REPO = Path(__file__).resolve().parent.parent


def plan(cluster: str = "dgx-h100", **ov: object):  # type: ignore[no-untyped-def]
    return build_plan(load_profile(cluster), Overrides(**ov), CTX)  # type: ignore[arg-type]


def test_four_dgx_nodes_have_32_gpus_and_a_consistent_split() -> None:
    p = plan(nodes=4)
    par = p.parallelism
    assert p.gpus == 32 and par.tp * par.pp * par.cp * par.dp == 32
    assert par.gbs == 1024 and par.gbs % (par.mbs * par.dp) == 0
    assert [s.name for s in p.stages] == ["download", "convert", "tokenize", "train", "export", "evaluate"]


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_nodes_rederives_parallelism(nodes: int) -> None:
    par = plan(nodes=nodes).parallelism
    assert par.world_size == nodes * 8
    assert 1024 % (par.mbs * par.dp) == 0


def test_seed_cpt_settings_are_the_defaults() -> None:
    t = plan().jobspec.train
    o = t.optim
    assert (o.lr, o.min_lr, o.warmup_steps, o.weight_decay, o.adam_beta1, o.adam_beta2, o.clip_grad) == (
        2.5e-5, 2.5e-6, 15, 0.1, 0.9, 0.95, 1.0)
    assert (t.max_steps, t.parallelism.gbs, t.seq_length, t.val_check_interval, t.precision) == (
        150, 1024, 8192, 15, "bf16-mixed")


def test_overrides_reach_the_job_spec() -> None:
    p = plan(nodes=2, max_steps=30, gbs=256, seq_length=4096, run_name="mine", container_image="img:1")
    t = p.jobspec.train
    assert (t.max_steps, t.parallelism.gbs, t.seq_length, p.run, p.container_image) == (30, 256, 4096, "mine", "img:1")
    assert p.run_dir == "/lustre/cpt/runs/mine" and p.job_run_dir == "/results/mine"


def test_cpu_stages_hold_no_gpus_and_train_holds_all() -> None:
    p = plan(nodes=4)
    for s in p.stages:
        if s.name == "train":
            assert (s.resources.kind, s.resources.nodes, s.resources.gpus_per_node) == ("gpu", 4, 8)
            assert s.resources.ntasks_per_node == 8 and s.resources.partition == "batch"
        elif s.name == "evaluate":  # one GPU of one node, whatever the train stage holds
            assert (s.resources.kind, s.resources.nodes, s.resources.gpus_per_node) == ("gpu", 1, 1)
            assert s.resources.ntasks_per_node == 1 and s.resources.partition == "batch"
        else:
            assert (s.resources.kind, s.resources.gpus_per_node, s.resources.nodes) == ("cpu", 0, 1)
            assert s.resources.partition == "cpu"
            assert "export CUDA_VISIBLE_DEVICES=''" in s.script


def test_dependencies_chain_the_pipeline() -> None:
    deps = {s.name: s.depends_on for s in plan().stages}
    assert deps == {"download": (), "convert": ("download",), "tokenize": ("download",),
                    "train": ("convert", "tokenize"), "export": ("train",), "evaluate": ("export",)}


def test_jsonl_data_is_tokenized_and_prefixes_skip_the_stage() -> None:
    p = plan(data=("ja_wiki/train_*.jsonl.gz",), valid_data=("ja_wiki/validation_0.jsonl.gz",))
    tok = p.stage("tokenize")
    assert tok.skip_reason is None
    assert "--input '/data/ja_wiki/train_*.jsonl.gz'" in tok.script
    assert p.jobspec.train.train_data == ["/data/tokenized/ja_wiki_train_text_document"]
    p2 = plan(data=("/lustre/cpt/data/tok/ja_text_document",), valid_data=("/lustre/cpt/data/tok/va_text_document",))
    assert p2.stage("tokenize").skip_reason is not None
    assert p2.stage("train").depends_on == ("convert",)
    assert p2.jobspec.train.train_data == ["/data/tok/ja_text_document"]  # as the container sees it
    assert "tokenize" not in [s.name for s in p2.active_stages]


def test_unweighted_prefixes_blend_by_their_tokens_once_known() -> None:
    """Not 50/50 whatever their sizes: without token counts the plan leaves the weights to pre-flight and the
    job; with them (from the .idx, gathered outside planning) the shares are proportional to tokens."""
    data = ("/lustre/cpt/data/a_text_document", "/lustre/cpt/data/b_text_document")
    p = plan(data=data)
    t = p.jobspec.train
    assert t.train_data == [] and [b.weight for b in t.blend] == [None, None]
    assert [b.prefix for b in t.blend] == ["/data/a_text_document", "/data/b_text_document"]
    ctx = dataclasses.replace(CTX, prefix_tokens={data[0]: 3_000, data[1]: 1_000})
    t = build_plan(load_profile("dgx-h100"), Overrides(data=data), ctx).jobspec.train
    assert t.train_data == [0.75, "/data/a_text_document", 0.25, "/data/b_text_document"]
    assert [b.tokens for b in t.blend] == [3_000, 1_000]


def test_container_paths_and_mounts() -> None:
    p = plan()
    assert ("/src/cpt-launch", "/opt/cpt-launch") in p.mounts
    t = p.jobspec.train
    assert t.tokenizer_dir == "/models/Llama-3.1-8B" and t.base_checkpoint == "/models/Llama-3.1-8B-nemo"
    assert t.checkpoint_dir == "/results/r1/checkpoints"
    assert p.stage("train").job_script_path == "/results/r1/scripts/train.sh"
    assert "export PYTHONPATH=/opt/cpt-launch" in p.stage("train").script


def test_local_profiles_use_host_paths_and_torchrun() -> None:
    p = plan("single-node")
    tr = p.stage("train")
    assert tr.launcher == "torchrun" and "--nproc-per-node=8" in tr.script
    assert p.mounts == () and p.jobspec.train.checkpoint_dir == "/data/cpt/runs/r1/checkpoints"
    w = plan("workstation-48gb")
    assert w.stage("train").launcher == "none" and w.gpus == 1


def test_bad_overrides_are_reported_together() -> None:
    with pytest.raises(ConfigError) as ei:
        plan(nodes=99, model="gpt-5", run_name="bad name", container_image="x")
    wheres = sorted(p.where for p in ei.value.problems)
    assert wheres == ["--model", "--nodes", "--run-name"]
    msg = str(ei.value)
    assert "nodes=99: dgx-h100 allows 1..64" in msg and "model=gpt-5: allowed: llama3.1-8b" in msg
    with pytest.raises(ConfigError) as ei2:
        plan("workstation-48gb", container_image="img")
    assert "--container-image" in str(ei2.value)


def test_secrets_are_named_never_valued() -> None:
    p = plan()
    text = json.dumps(p.to_json())
    assert "HF_TOKEN" in text  # the name travels
    for s in p.stages:
        assert "HF_TOKEN=" not in s.script and "WANDB_API_KEY=" not in s.script


def test_scripts_quote_values_and_start_strict() -> None:
    p = plan(data=("ja wiki/train_*.jsonl",))
    for s in p.active_stages:
        assert s.script.startswith("#!/bin/bash\n# Generated by cpt-launch")
        assert "set -euo pipefail" in s.script and "set -x" not in s.script
    assert "--input '/data/ja wiki/train_*.jsonl'" in p.stage("tokenize").script


def test_planning_is_pure_and_independent_of_the_environment() -> None:
    """No subprocess, no file write, no mkdir while planning; the same plan whatever the environment says."""
    code = textwrap.dedent("""
        import json, os, sys
        events = []
        armed = [False]
        def hook(ev, args):
            if not armed[0]:
                return
            if ev in ("subprocess.Popen", "os.system", "os.mkdir", "os.rename", "os.remove", "shutil.rmtree",
                      "os.exec", "os.posix_spawn", "os.fork"):
                events.append(ev)
            if ev == "open" and len(args) > 1 and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
                events.append(("open-write", str(args[0])))
        sys.addaudithook(hook)
        from launcher.plan import Overrides, PlanContext, build_plan
        from launcher.profiles import load_profile
        prof = load_profile("dgx-h100")
        ctx = PlanContext(code_dir="/src", command="c", run_name="r")
        armed[0] = True
        p = build_plan(prof, Overrides(nodes=4), ctx)
        armed[0] = False
        print(json.dumps({"events": events, "plan": p.to_json(),
                          "heavy": sorted(m for m in ("torch", "nemo", "nemo_run") if m in sys.modules)}))
    """)
    outs = []
    for extra in ({}, {"HF_TOKEN": "x", "SLURM_JOB_ID": "7", "NEMORUN_HOME": "/nowhere", "USER": "someone"}):
        # no bytecode cache: writing .pyc files on a first import is Python's, not planning's
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **extra}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["events"] == [] and outs[0]["heavy"] == []
    assert outs[0]["plan"] == outs[1]["plan"]


def test_random_init_skips_download_and_convert() -> None:
    """--random-init (benchmarks): no base weights, so nothing to fetch or convert; train starts after tokenize,
    the JobSpec says random_init with no base checkpoint, and the summary says it loudly."""
    from launcher.plan import plan_summary

    p = plan("workstation-48gb", random_init=True, num_layers=8, model_dir="/bench/tokenizer")
    skipped = {s.name: s.skip_reason for s in p.stages if s.skip_reason}
    assert set(skipped) == {"download", "convert"} and "/bench/tokenizer" in str(skipped["download"])
    assert p.stage("train").depends_on == ("tokenize",)
    t = p.jobspec.train
    assert t.random_init and t.base_checkpoint == "" and t.tokenizer_dir == "/bench/tokenizer"
    assert "RANDOMLY INITIALISED" in plan_summary(p)
    normal = plan("workstation-48gb")
    assert not normal.jobspec.train.random_init and normal.jobspec.train.base_checkpoint
    assert not any(s.skip_reason for s in normal.stages if s.name in ("download", "convert"))
    assert "RANDOMLY" not in plan_summary(normal)


@pytest.mark.parametrize("inherited,expected", [(None, "/code"), ("/opt/megatron-lm:/x y", "/code:/opt/megatron-lm:/x y")])
def test_stage_scripts_prepend_to_pythonpath(tmp_path: Path, inherited: str | None, expected: str) -> None:
    """A stage puts the launcher's code first on PYTHONPATH and keeps what the image or the user set (NGC images
    and source installs of NeMo/Megatron-LM rely on it); unset, it stays clean under `set -u`."""
    from launcher.plan import render_stage_script

    script = tmp_path / "s.sh"
    script.write_text(render_stage_script(
        run="r", stage="train", cmds=[[sys.executable, "-c", "import os; print(os.environ['PYTHONPATH'])"]],
        env={"PYTHONPATH": "/code", "PYTHONUNBUFFERED": "1"}, secrets=(), workdir=str(tmp_path), command="t"))
    env = {"PATH": os.environ["PATH"], **({"PYTHONPATH": inherited} if inherited is not None else {})}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected


def test_short_runs_validate_at_their_end() -> None:
    """The seed validates every 15 steps; Lightning refuses an interval above the run's steps (found on the H200
    after minutes of setup), so a shorter run validates once, at its last step."""
    assert plan(max_steps=4).jobspec.train.val_check_interval == 4
    assert plan(max_steps=150).jobspec.train.val_check_interval == 15


def test_the_jobs_own_spec_checks_run_before_submission() -> None:
    """What recipes.entry would refuse inside the job is refused by the pre-flight, before the queue."""
    import dataclasses

    from launcher.preflight import check_plan

    p = plan(nodes=1, max_steps=10)
    assert not [x for x in check_plan(p, {}, filesystem=False) if x.where.startswith("jobspec")
                and x.severity == "error"]
    t = dataclasses.replace(p.jobspec.train, val_check_interval=20, ckpt_keep=0)
    bad = dataclasses.replace(p, jobspec=dataclasses.replace(p.jobspec, train=t))
    errors = {x.where: x.message for x in check_plan(bad, {}, filesystem=False) if x.severity == "error"}
    assert "20 > max_steps=10" in errors["jobspec train.val_check_interval"]
    assert "ckpt_keep must be >= 1" in errors["jobspec train.ckpt_every_n_steps"]


def test_the_device_benchmark_profile_plans_the_benchmark_run() -> None:
    """benchmarks/train/h200-device.yaml (the GPU runs through cpt-launch itself): it loads, and the run that
    device_c.sh launches is planned as call 4 ran it (8 layers, TP1 DP1, MBS 1, no offload, SDPA, random init)."""
    prof = load_profile(str(REPO / "benchmarks" / "train" / "h200-device.yaml"))
    p = build_plan(prof, Overrides(random_init=True, num_layers=8, model_dir="/tmp/cpt/data/tokenizer", max_steps=40,
                                   gbs=8, ckpt_every_n_steps=10, mbs=1, recompute="none", optimizer_offload="off",
                                   run_name="main8"), CTX)
    t = p.jobspec.train
    par = p.parallelism
    assert (par.tp, par.pp, par.cp, par.dp, par.mbs, par.gbs) == (1, 1, 1, 1, 1, 8)
    assert t.random_init and t.num_layers == 8 and t.attention == "sdpa" and not t.optimizer_offload
    assert t.train_data == ["/tmp/cpt/data/ja_text_document"] and t.valid_data == ["/tmp/cpt/data/ja_valid_text_document"]
    assert [s.name for s in p.active_stages] == ["train", "export", "evaluate"]
    # random init: no base model to compare with (the run did not start from --model-dir's weights)
    assert "--base-model-dir" not in p.stage("evaluate").command


def test_a_local_model_dir_skips_download_and_names_its_own_converted_checkpoint() -> None:
    p = plan("workstation-48gb", model_dir="/m/tiny-llama", num_layers=4, model="llama3.2-1b")
    assert p.stage("download").skip_reason and "/m/tiny-llama" in p.stage("download").skip_reason
    assert p.stage("convert").depends_on == () and p.stage("convert").skip_reason is None
    # two model dirs, or a cut-down copy of one, never share one converted checkpoint
    assert p.jobspec.convert.output_path.endswith("/tiny-llama-4l-nemo")
    assert p.jobspec.train.base_checkpoint == p.jobspec.convert.output_path
    assert p.jobspec.convert.num_layers == p.jobspec.export.num_layers == 4
    assert plan("workstation-48gb").jobspec.convert.output_path.endswith("/Llama-3.1-8B-nemo")


def test_the_allocator_setting_is_in_the_train_script_before_python_starts() -> None:
    p = plan("workstation-48gb")
    train = p.stage("train").script
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in train
    assert train.index("PYTORCH_CUDA_ALLOC_CONF") < train.index("recipes.entry")
    assert "PYTORCH_CUDA_ALLOC_CONF" not in p.stage("convert").script  # CPU stages: no CUDA allocator


def test_the_step_log_lives_outside_nemos_log_dir() -> None:
    t = plan("workstation-48gb").jobspec.train
    # NeMo's logger moves the files it finds in log_dir into run_N/ on a resume: the step log would vanish
    assert not t.step_log.startswith(t.log_dir.rstrip("/") + "/")
    assert t.step_log.endswith("/logs/train_steps.jsonl")


def test_checkpoint_and_validation_flags_reach_the_job_spec() -> None:
    t = plan("workstation-48gb", ckpt_every_n_steps=20, ckpt_keep=3, ckpt_async=False, val_every_n_steps=10,
             max_steps=40).jobspec.train
    assert (t.ckpt_every_n_steps, t.ckpt_keep, t.ckpt_async_save, t.val_check_interval) == (20, 3, False, 10)


def test_checkpoint_and_validation_counts_below_one_name_their_flag() -> None:
    with pytest.raises(ConfigError) as e:
        plan("workstation-48gb", ckpt_keep=0, ckpt_every_n_steps=-3, val_every_n_steps=0)
    where = {p.where: p.message for p in e.value.problems}
    assert where["--ckpt-keep"] == "ckpt-keep=0: must be >= 1"
    assert where["--ckpt-every"] == "ckpt-every=-3: must be >= 1"
    assert where["--val-every"] == "val-every=0: must be >= 1"
