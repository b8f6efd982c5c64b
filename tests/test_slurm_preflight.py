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
    # the train stage and the one-GPU evaluate stage both use it (two requests, two answers)
    assert [x.where for x in p] == ["slurm (train stage)", "slurm (evaluate stage)"]
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


@pytest.mark.parametrize("backend", ["nemo-run", "submitit"])
def test_a_submission_that_fails_part_way_leaves_nothing_queued(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                                 backend: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The last stage's request is refused by sbatch after the first four were queued (a partition that vanished
    between pre-flight and submission): the CLI withdraws the four, so no stage of a half-submitted pipeline runs,
    and the manifest says so."""
    import argparse
    import dataclasses
    import json
    import time

    from launcher.cli import EXIT_SUBMIT, _submit

    plan = plan_for(tmp_path, 2)
    run = f"half-{backend}-{os.getpid()}-{int(time.time()) % 100000}"
    plan = dataclasses.replace(plan, run=run, run_dir=str(tmp_path / "runs" / run),
                               job_run_dir=str(tmp_path / "runs" / run))
    stages = tuple(dataclasses.replace(s, depends_on=())
                   if s.name != "export" else
                   dataclasses.replace(s, depends_on=(), resources=dataclasses.replace(s.resources,
                                                                                       partition="vanished"))
                   for s in plan.stages)
    # no afterok chain: the first four would start at once if they stayed queued
    plan = dataclasses.replace(plan, stages=stages)
    # hold them so they cannot start before the rollback (a real queue wait)
    slurm_cluster.run("scontrol", "update", "PartitionName=cpu", "State=DOWN")
    slurm_cluster.run("scontrol", "update", "PartitionName=gpu", "State=DOWN")
    try:
        rc = _submit(plan, argparse.Namespace(backend=backend, wait=False))
    finally:
        slurm_cluster.run("scontrol", "update", "PartitionName=cpu", "State=UP")
        slurm_cluster.run("scontrol", "update", "PartitionName=gpu", "State=UP")
    err = capsys.readouterr().err
    assert rc == EXIT_SUBMIT and "submission failed" in err
    assert "withdrew the jobs already queued" in err
    queued = slurm_cluster.run("squeue", "-h", "-o", "%j").stdout.split()
    assert not [n for n in queued if n.startswith(run + ".")], queued
    names = ",".join(f"{run}.{s}" for s in ("download", "convert", "tokenize", "train"))
    states: dict[str, str] = {}
    for _ in range(40):  # slurmdbd records the cancelled jobs a moment later
        rows = slurm_cluster.run("sacct", "-n", "-X", "-P", "--format=JobName,State", "--name", names).stdout
        states = {ln.split("|")[0]: ln.split("|")[1].split()[0] for ln in rows.splitlines() if ln}
        if len(states) == 4:
            break
        time.sleep(0.5)
    assert states == {f"{run}.{s}": "CANCELLED" for s in ("download", "convert", "tokenize", "train")}, states
    m = json.loads((Path(plan.run_dir) / "manifest.json").read_text())
    assert all(s["state"] in ("CANCELLED", "FAILED") for s in m["stages"].values()), m["stages"]
