"""The real services behave as the launcher's integration tests assume (see tests/fixtures/services.py).

These test the test infrastructure, not the launcher: multi-node GPU jobs on the local Slurm cluster,
afterok chains that stop at a failure, requeue, sacct, and python3 inside the Docker test image.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.services import REPO_ROOT, SlurmCluster


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


@pytest.mark.slurm
def test_two_node_gpu_job_runs_one_rank_per_node(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = _script(
        tmp_path / "ranks.sbatch",
        "srun bash -c 'echo \"rank=$SLURM_PROCID node=$SLURMD_NODENAME "
        "cvd=$CUDA_VISIBLE_DEVICES nnodes=$SLURM_JOB_NUM_NODES\"'\n",
    )
    job = slurm_cluster.sbatch(
        script, "-N2", "--ntasks-per-node=1", "--gres=gpu:8", "-o", str(tmp_path / "out-%j.txt"), "-J", "ranks"
    )
    assert slurm_cluster.wait(job) == "COMPLETED"

    lines = sorted((tmp_path / f"out-{job}.txt").read_text().split("\n"))
    ranks = [dict(kv.split("=", 1) for kv in ln.split()) for ln in lines if ln.startswith("rank=")]
    assert [r["rank"] for r in ranks] == ["0", "1"]
    assert len({r["node"] for r in ranks}) == 2, ranks  # one rank per node
    assert all(r["cvd"] == "0,1,2,3,4,5,6,7" for r in ranks), ranks
    assert all(r["nnodes"] == "2" for r in ranks), ranks

    rows = slurm_cluster.sacct(job, "JobID,State,ExitCode,AllocTRES")
    alloc = next(r for r in rows if r["JobID"] == job)
    assert alloc["State"] == "COMPLETED" and alloc["ExitCode"] == "0:0"
    assert "gres/gpu=16" in alloc["AllocTRES"], alloc
    step0 = next(r for r in rows if r["JobID"] == f"{job}.0")
    assert step0["State"] == "COMPLETED"


@pytest.mark.slurm
def test_afterok_chain_stops_at_a_failed_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    first = slurm_cluster.sbatch(
        _script(tmp_path / "fail.sbatch", "echo failing\nexit 3\n"), "-p", "cpu", "-o", str(tmp_path / "f-%j.out")
    )
    second = slurm_cluster.sbatch(
        _script(tmp_path / "never.sbatch", f"touch {marker}\n"),
        "-p",
        "cpu",
        f"--dependency=afterok:{first}",
        "-o",
        str(tmp_path / "s-%j.out"),
    )
    assert slurm_cluster.wait(first) == "FAILED"
    assert slurm_cluster.sacct(first, "JobID,State,ExitCode")[0]["ExitCode"] == "3:0"

    # The cluster runs with DependencyParameters=kill_invalid_depend: the dependent job is cancelled.
    # (Without it, it would stay PENDING with reason DependencyNeverSatisfied: accept that too.)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = slurm_cluster.state(second)
        reason = slurm_cluster.run("squeue", "-h", "-j", second, "-o", "%r", check=False).stdout.strip()
        if state == "CANCELLED" or reason == "DependencyNeverSatisfied":
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"dependent job {second}: state {state!r}, reason {reason!r}")
    slurm_cluster.run("scancel", second, check=False)
    assert not marker.exists(), "the dependent job ran although its afterok dependency failed"
    assert not (tmp_path / f"s-{second}.out").exists()


@pytest.mark.slurm
def test_afterok_chain_runs_when_first_succeeds(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    first = slurm_cluster.sbatch(
        _script(tmp_path / "a.sbatch", f"sleep 1; echo a >> {order}\n"), "-p", "cpu", "-o", "/dev/null"
    )
    second = slurm_cluster.sbatch(
        _script(tmp_path / "b.sbatch", f"echo b >> {order}\n"),
        "-p",
        "cpu",
        f"--dependency=afterok:{first}",
        "-o",
        "/dev/null",
    )
    assert slurm_cluster.wait(second) == "COMPLETED"
    assert slurm_cluster.state(first) == "COMPLETED"
    assert order.read_text().split() == ["a", "b"]


@pytest.mark.slurm
def test_requeued_job_runs_again_with_restart_count(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    script = _script(
        tmp_path / "requeue.sbatch",
        f'echo "start ${{SLURM_RESTART_COUNT:-0}}" >> {starts}\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi\n',
    )
    job = slurm_cluster.sbatch(script, "--requeue", "-p", "cpu", "-o", "/dev/null")
    deadline = time.monotonic() + 60
    while not (starts.exists() and starts.read_text()):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    slurm_cluster.run("scontrol", "requeue", job)
    # cred_expire=10 in the test cluster: a requeued job may start again after ~11 s (default 121 s).
    assert slurm_cluster.wait(job, timeout=90) == "COMPLETED"
    assert starts.read_text().split("\n")[:2] == ["start 0", "start 1"]
    states = slurm_cluster.run("sacct", "-n", "-X", "-P", "-D", "-j", job, "-o", "State").stdout.split()
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states


@pytest.mark.slurm
def test_cluster_shape(slurm_cluster: SlurmCluster) -> None:
    out = slurm_cluster.run("sinfo", "-h", "-N", "-o", "%N|%P|%G|%c").stdout.split()
    rows = {tuple(line.split("|")) for line in out}
    for node in slurm_cluster.nodes:
        for part in ("gpu*", "cpu"):
            assert (node, part, "gpu:8", str(slurm_cluster.cpus_per_node)) in rows, rows


@pytest.mark.docker
def test_docker_image_runs_python3_with_the_repo_mounted(docker_image: str) -> None:
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{REPO_ROOT}:/repo:ro",
            "-w",
            "/repo",
            docker_image,
            "python3",
            "-c",
            "import sys, launcher; print(sys.version_info[:2] >= (3, 11), launcher.__file__)",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "/repo/launcher/__init__.py"]
