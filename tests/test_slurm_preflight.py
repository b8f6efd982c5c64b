"""Pre-flight asks the real Slurm test cluster (.ci/slurm/cluster.sh) whether it would accept each stage's request
(`sbatch --test-only` with the stage's own #SBATCH options): what it refuses is an error before anything is queued.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.plan import LaunchPlan, Overrides, PlanContext, build_plan
from launcher.preflight import check_slurm_request
from launcher.profiles import parse_profile
from tests.fixtures.services import SlurmCluster

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent


def plan_for(tmp: Path, nodes: int, **slurm: object) -> LaunchPlan:
    d = yaml.safe_load((REPO / "clusters" / "test-slurm.yaml").read_text())
    d["slurm"].update(slurm)
    d["hardware"]["max_nodes"] = 16  # the profile may claim more than the test cluster has: Slurm has the last word
    d["storage"] = {k: {"host": str(tmp / k)} for k in ("runs", "models", "data")}
    src = tmp / "p.yaml"
    src.write_text(yaml.safe_dump(d))
    return build_plan(parse_profile(src.read_text(), str(src)),
                      Overrides(nodes=nodes, model="llama3.2-1b", gbs=128, seq_length=1024),
                      PlanContext(code_dir=str(REPO), command="pytest", run_name="pf"))


def test_a_request_the_cluster_accepts_passes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    jobs_before = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    assert check_slurm_request(plan_for(tmp_path, 2), dict(os.environ)) == []
    assert check_slurm_request(plan_for(tmp_path, 4), dict(os.environ)) == []
    # --test-only queues nothing
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split() == jobs_before


def test_what_slurm_refuses_is_an_error_before_submission(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # a partition the cluster does not have: every stage that uses it
    p = check_slurm_request(plan_for(tmp_path, 2, partition="gpux"), dict(os.environ))
    assert [x.where for x in p] == ["slurm (train stage)"]
    assert "--partition=gpux" in p[0].message and "Invalid partition name" in p[0].message
    # more nodes than the partition holds (the profile said 16 were allowed)
    p = check_slurm_request(plan_for(tmp_path, 8), dict(os.environ))
    assert [x.where for x in p] == ["slurm (train stage)"]
    assert "--nodes=8" in p[0].message and "Requested node configuration is not available" in p[0].message
    # the CPU partition gone: the CPU stages share one request, so one answer and one error
    p = check_slurm_request(plan_for(tmp_path, 2, cpu_partition="nocpu"), dict(os.environ))
    assert len(p) == 1 and p[0].where.startswith("slurm (") and "--partition=nocpu" in p[0].message


def test_without_sbatch_on_path_it_says_where_to_run(tmp_path: Path) -> None:
    p = check_slurm_request(plan_for(tmp_path, 2), {"PATH": str(tmp_path)})
    assert len(p) == 1 and "sbatch is not on PATH" in p[0].message and "--emit-sbatch" in p[0].message


def test_cli_check_reports_it(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Through `cpt-launch check`, as a user runs it: exit 2 and the refusal, nothing queued."""
    d = yaml.safe_load((REPO / "clusters" / "test-slurm.yaml").read_text())
    d["slurm"]["partition"] = "gpux"
    d["storage"] = {k: {"host": str(tmp_path / k)} for k in ("runs", "models", "data")}
    prof = tmp_path / "bad.yaml"
    prof.write_text(yaml.safe_dump(d))
    r = subprocess.run([sys.executable, "-m", "launcher.cli", "check", "--cluster", str(prof)], capture_output=True,
                       text=True, cwd=REPO, env=slurm_cluster.env, timeout=120)
    assert r.returncode == 2
    assert "slurm (train stage): error: Slurm refuses" in r.stderr and "Invalid partition name" in r.stderr
