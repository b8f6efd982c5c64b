"""--wandb-project: plan -> job spec -> NeMo's WandbLogger; the key only by name; offline where the profile says the
cluster has no internet. The recipe part needs the [nemo] extra (CI installs it) and, for the offline run, wandb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.plan import Overrides, PlanContext, build_plan
from launcher.profiles import load_profile

REPO = Path(__file__).resolve().parent.parent
SECRET = "wandb-key-that-must-never-be-written-0123456789"


def _plan(profile: str, **kw: object):  # type: ignore[no-untyped-def]
    return build_plan(load_profile(profile), Overrides(**kw),  # type: ignore[arg-type]
                      PlanContext(code_dir="/src", command="test", run_name="r"))


def test_offline_cluster_runs_wandb_offline_in_the_train_stage_only() -> None:
    plan = _plan("dgx-h100", wandb_project="cpt-ja")
    assert plan.profile.hardware.internet is False
    assert plan.jobspec.train.wandb_project == "cpt-ja"
    train = plan.stage("train").script
    assert "export WANDB_MODE=offline" in train
    assert "WANDB_API_KEY" in train.split("# Secrets are inherited", 1)[1].splitlines()[0]  # named, not set
    assert "WANDB_API_KEY=" not in train
    for s in plan.stages:
        if s.name != "train":
            assert "WANDB_MODE" not in s.script
    assert plan.stage("train").outputs["wandb"] == f"{plan.run_dir}/train/wandb"


def test_online_cluster_and_no_project_set_no_wandb_mode() -> None:
    assert "WANDB_MODE" not in _plan("workstation-48gb", wandb_project="cpt-ja").stage("train").script
    plan = _plan("dgx-h100")
    assert plan.jobspec.train.wandb_project is None and "WANDB_MODE" not in plan.stage("train").script
    assert "wandb" not in plan.stage("train").outputs


def test_the_key_is_never_written_into_the_plan_or_scripts(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "--cluster", "dgx-h100", "--wandb-project",
                        "cpt-ja", "--json"], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "WANDB_API_KEY": SECRET})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["train"]["wandb_project"] == "cpt-ja" and "WANDB_API_KEY" in d["secrets_passed_by_name"]
    assert d["hardware"] == {"gpu": "h100-80gb", "peak_bf16_tflops": 989.0, "internet": False}
    assert SECRET not in r.stdout + r.stderr


def test_a_bad_project_name_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--cluster", "dgx-h100", "--wandb-project", "team/cpt"]) == 2
    err = capsys.readouterr().err
    assert "--wandb-project" in err and "wandb-project=team/cpt" in err


@pytest.mark.nemo
def test_the_recipe_logs_to_wandb_offline_under_the_run_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nemo.collections.llm", reason="needs nemo_toolkit 2.7.x: pip install -e '.[nemo]'")
    pytest.importorskip("wandb", reason="needs wandb (NeMo's WandbLogger)")
    import fiddle as fdl

    from recipes import cpt

    plan = _plan("test-slurm", wandb_project="cpt-ja")
    spec = plan.jobspec.train
    r = cpt.train_recipe(spec, cpt.resolve_attention(spec))
    assert not [c for c in cpt.train_recipe_checks(r, spec, cpt.resolve_attention(spec)) if not c.ok]
    assert r.log.wandb.project == "cpt-ja" and r.log.wandb.name == spec.run_name
    assert r.log.tensorboard is not None and r.log.log_dir == spec.log_dir
    # the logger as the job builds it, under the train stage's environment: offline, no network, no key
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = fdl.build(r.log.wandb)
    logger._wandb_init["dir"] = str(tmp_path)  # what NeMoLogger does with log_dir (tmp here: no /results)
    logger.log_metrics({"reduced_train_loss": 2.5}, step=1)
    run_dir = Path(logger.experiment.dir)
    logger.experiment.finish()
    assert str(run_dir).startswith(str(tmp_path / "wandb" / "offline-run-")), run_dir


def test_docker_logs_offline_because_the_key_never_enters_the_container() -> None:
    plan = _plan("local-docker", wandb_project="cpt-ja")
    assert plan.profile.hardware.internet is True
    assert "export WANDB_MODE=offline" in plan.stage("train").script


def test_online_without_a_key_warns_before_the_queue() -> None:
    from launcher.preflight import check_plan

    plan = _plan("workstation-48gb", wandb_project="cpt-ja")
    warn = [p for p in check_plan(plan, {}, filesystem=False) if p.where == "env WANDB_API_KEY"]
    assert len(warn) == 1 and warn[0].severity == "warning" and "export WANDB_API_KEY" in warn[0].message
    assert not [p for p in check_plan(plan, {"WANDB_API_KEY": SECRET}, filesystem=False)
                if p.where == "env WANDB_API_KEY"]
    offline = _plan("dgx-h100", wandb_project="cpt-ja")
    assert not [p for p in check_plan(offline, {}, filesystem=False) if p.where == "env WANDB_API_KEY"]
    assert all(SECRET not in p.message for p in check_plan(plan, {"WANDB_API_KEY": SECRET}, filesystem=False))
