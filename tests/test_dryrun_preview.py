"""The dry run shows what each backend will submit: nemo_run's #SBATCH and srun lines (held equal to the scripts
real nemo_run renders: tests/golden/nemo_run, refreshed by tests/test_slurm_golden.py), submitit's own script,
our sbatch scripts; and the read-only pre-flight findings, labelled, in text and --json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from launcher.cli import main
from launcher.plan import Overrides, PlanContext, build_plan
from launcher.preview import nemo_run_directives, nemo_run_preview, nemo_run_srun, submission_preview
from launcher.profiles import parse_profile

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "nemo_run"
ROOT = "/tmp/cpt-golden"  # the golden files' storage root (tests/test_slurm_golden.py)


def _plan(nodes: int) -> Any:
    text = (REPO / "clusters" / "dgx-h100.yaml").read_text().replace("/lustre/cpt", ROOT)
    ctx = PlanContext(code_dir="/src/cpt-launch", command=f"cpt-launch --cluster dgx-h100 --nodes {nodes}",
                      run_name=f"golden-{nodes}n")
    return build_plan(parse_profile(text, "clusters/dgx-h100.yaml"), Overrides(nodes=nodes), ctx)


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_nemo_run_lines_equal_what_nemo_run_renders(nodes: int) -> None:
    plan = _plan(nodes)
    for stage in plan.active_stages:
        gold = (GOLDEN / f"dgx-h100-{nodes}n-{stage.name}.sbatch").read_text()
        want_sbatch = [ln for ln in gold.splitlines() if ln.startswith("#SBATCH")]
        want_srun = [ln for ln in gold.splitlines() if ln.startswith("srun --output")]
        got = [ln.replace("@EXP_ID@", "<EXP_ID>") for ln in nemo_run_directives(plan, stage)]
        assert got == want_sbatch, stage.name
        assert [nemo_run_srun(plan, stage).replace("@EXP_ID@", "<EXP_ID>")] == want_srun, stage.name


def test_preview_names_dependencies_and_the_stage_script() -> None:
    plan = _plan(4)
    train = nemo_run_preview(plan, plan.stage("train"))
    assert "#SBATCH --dependency=afterok:<convert job id>:<tokenize job id>" in train
    assert "--container-mounts /tmp/cpt-golden/runs:/results," in train
    assert f"runs: bash {plan.stage('train').job_script_path}" in train
    assert "--dependency" not in nemo_run_preview(plan, plan.stage("download"))


def test_submitit_preview_is_submitits_own_script() -> None:
    plan = _plan(2)
    text = submission_preview(plan, "submitit")["train (submitit)"]
    assert "#SBATCH --nodes=2" in text and "#SBATCH --dependency=afterok:<convert_job_id>:<tokenize_job_id>," \
                                             "singleton" in text
    assert "--container-image=nvcr.io/nvidia/nemo:25.02.01" in text  # the Pyxis flags on srun
    assert re.search(r"^srun .*submitit", text, re.M)


def _dry(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["--cluster", "dgx-h100", "--nodes", "4", "--run-name", "preview", "--dry-run", *args])
    return rc, capsys.readouterr().out


def test_dry_run_shows_each_backends_submission(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _dry(capsys)
    assert rc == 0
    assert "# ===== submitted: train (nemo-run) =====" in out and "#SBATCH --nodes=4" in out
    assert re.search(r"^srun --output \S+ --container-image nvcr.io/nvidia/nemo:25.02.01 --container-mounts", out,
                     re.M)
    rc, out = _dry(capsys, "--backend", "sbatch")
    assert rc == 0 and "# ===== submitted: train.sbatch (sbatch) =====" in out and "#SBATCH --requeue" in out
    assert "--container-image=nvcr.io/nvidia/nemo:25.02.01" in out


def test_dry_run_lists_the_file_findings_check_would_refuse(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    # storage that does not exist on this machine: check refuses, the dry run shows the same findings, labelled
    rc_check = main(["check", "--cluster", "dgx-h100", "--nodes", "4", "--run-name", "preview", "--json"])
    check = json.loads(capsys.readouterr().out)
    assert rc_check == 2
    rc, out = _dry(capsys, "--json")
    d = json.loads(out)
    assert rc == 0
    seen = [p for p in d["problems"] if p["check"].startswith("files")]
    # the same findings (check also asks Slurm, and sizes --ckpt-keep to the free space it sees)
    assert {p["where"] for p in seen} <= {p["where"] for p in check["problems"] if p["severity"] == "error"}
    assert any(p["where"].startswith("mount /tmp") or p["where"].startswith("mount /lustre") for p in seen)
    assert seen and all(p["severity"] == "error" for p in seen)
    assert set(d["submission"]) == {f"{s} (nemo-run)" for s in ("download", "convert", "tokenize", "train", "evaluate",
                                                                  "export")}
    rc, text = _dry(capsys)
    n = len(seen)
    assert f"pre-flight of the files, read-only, from this machine: {n} error(s) that would stop a submission" in text
