"""Multi-node launch, proven on the real 4-node Slurm test cluster (.ci/slurm/cluster.sh).

Every job here is the train stage of a real plan, rendered by ``launcher.sbatch`` from templates/train.sbatch.j2
(or submitted by the submitit backend with the same rendezvous), whose task command is replaced by
``launcher.stages.selftest``: a CPU gloo program in place of the trainer, started exactly the way the trainer
is started. The host has 2 cores, so the test profiles ask for 1-2 tasks ("GPUs") per node.

Run: ``python -m pytest -m slurm tests/test_multinode.py`` (the cluster is brought up if needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.plan import LaunchPlan, Overrides, PlanContext, build_plan, render_stage_script
from launcher.profiles import ClusterProfile, parse_profile
from tests.fixtures.services import TERMINAL_STATES, SlurmCluster

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def make_profile(tmp: Path, *, gpus_per_node: int = 2, max_requeues: int = 2, signal_seconds: int = 30,
                 time_limit: str = "00:05:00") -> ClusterProfile:
    """clusters/test-slurm.yaml with few tasks per node and storage under ``tmp``."""
    d = yaml.safe_load((ROOT / "clusters" / "test-slurm.yaml").read_text())
    d["hardware"]["gpus_per_node"] = gpus_per_node
    d["slurm"].update(max_requeues=max_requeues, signal_seconds=signal_seconds, time=time_limit)
    d["storage"] = {k: {"host": str(tmp / k)} for k in ("runs", "models", "data")}
    src = tmp / "test-mn.yaml"
    src.write_text(yaml.safe_dump(d))
    return parse_profile(src.read_text(), str(src))


def make_plan(profile: ClusterProfile, nodes: int, run: str) -> LaunchPlan:
    ov = Overrides(nodes=nodes, run_name=run, model="llama3.2-1b", gbs=8, seq_length=1024,
                   data=("ja_text_document",))
    ctx = PlanContext(code_dir=str(ROOT), command=f"pytest tests/test_multinode.py ({run})", run_name=run,
                      python=sys.executable)
    return build_plan(profile, ov, ctx)


def with_train_command(plan: LaunchPlan, selftest_args: list[str]) -> LaunchPlan:
    """The plan's train stage alone, its trainer replaced by ``launcher.stages.selftest`` (same env, same dir)."""
    train = plan.stage("train")
    cmd = [sys.executable, "-m", "launcher.stages.selftest", *selftest_args]
    script = render_stage_script(run=plan.run, stage="train", cmds=[cmd], env=dict(plan.env),
                                 secrets=plan.secrets, workdir=plan.job_run_dir, command=plan.command)
    stage = dataclasses.replace(train, script=script, command=tuple(cmd), depends_on=())
    return dataclasses.replace(plan, stages=(stage,))


def expand_nodes(cluster: SlurmCluster, nodelist: str) -> list[str]:
    return cluster.run("scontrol", "show", "hostnames", nodelist).stdout.split()


def train_log(plan: LaunchPlan) -> str:
    p = Path(plan.stage("train").log_path)
    return p.read_text() if p.exists() else "(no log)"


def unique(prefix: str) -> str:
    """Run names unique across test runs: the test cluster reuses job ids after a restart while its accounting
    database keeps the old jobs, so these tests find their jobs in sacct by id AND name."""
    return f"{prefix}-{os.getpid()}-{int(time.time() * 1000) % 10**7}"


def job_rows(cluster: SlurmCluster, jid: str, name: str) -> list[dict[str, str]]:
    """sacct allocation rows of job ``jid`` named ``name``, every requeued attempt (-D), oldest first."""
    fields = ["JobName", "State", "ExitCode", "NodeList"]
    out = cluster.run("sacct", "-n", "-X", "-P", "-D", "-j", jid, "-o", ",".join(fields), check=False).stdout
    rows = [dict(zip(fields, ln.split("|"))) for ln in out.splitlines() if ln.strip()]
    return [r for r in rows if r["JobName"] == name]


def job_state(cluster: SlurmCluster, jid: str, name: str) -> str:
    rows = job_rows(cluster, jid, name)
    q = cluster.run("squeue", "-h", "-j", jid, "-o", "%j|%T", check=False).stdout.strip()
    if q and q.split("|")[0] == name:
        return q.split("|")[1]  # squeue knows a live job first (slurmdbd may lag)
    return rows[-1]["State"].split()[0] if rows else ""


def wait_job(cluster: SlurmCluster, jid: str, name: str, timeout: float = 110) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = job_state(cluster, jid, name)
        if state in TERMINAL_STATES:
            return state
        time.sleep(0.3)
    pytest.fail(f"job {jid} ({name}) not finished after {timeout:.0f} s (last state {state!r})")


def wait_for(pred, timeout: float, what: str, poll: float = 0.3):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# ---- one process group across nodes ---------------------------------------------------------------------------


@pytest.mark.parametrize("nodes,tasks_per_node", [(2, 2), (4, 1)])
def test_emitted_train_sbatch_forms_one_process_group(slurm_cluster: SlurmCluster, tmp_path: Path, nodes: int,
                                                      tasks_per_node: int) -> None:
    from launcher.executors.sbatch_backend import emit_sbatch

    plan = make_plan(make_profile(tmp_path, gpus_per_node=tasks_per_node), nodes, unique(f"pg{nodes}"))
    out = tmp_path / "allreduce.json"
    plan = with_train_command(plan, ["allreduce", "--out", str(out)])
    emit_sbatch(plan, tmp_path / "emit")
    jid = slurm_cluster.sbatch(tmp_path / "emit" / "train.sbatch")  # the emitted file, as a user submits it
    name = f"{plan.run}.train"
    state = wait_job(slurm_cluster, jid, name)
    assert state == "COMPLETED", train_log(plan)
    r = json.loads(out.read_text())
    world = nodes * tasks_per_node
    assert r["problems"] == []
    assert r["world_size"] == world and r["nnodes"] == nodes
    assert r["allreduce_sum"] == world * (world + 1) / 2
    assert sorted(t["rank"] for t in r["tasks"]) == list(range(world))
    alloc = expand_nodes(slurm_cluster, job_rows(slurm_cluster, jid, name)[-1]["NodeList"])
    assert sorted({t["node"] for t in r["tasks"]}) == sorted(alloc) and len(alloc) == nodes
    # NODE_RANK/LOCAL_RANK come from each task's own Slurm environment; rank = node_rank * tpn + local_rank
    assert all(t["rank"] == t["node_rank"] * tasks_per_node + t["local_rank"] for t in r["tasks"])
    # MASTER_ADDR is the first node of the allocation (NodeAddr 127.0.0.1 here: node names are not in DNS)
    assert r["master"].startswith("127.0.0.1:")
    assert "rendezvous 127.0.0.1:" in train_log(plan)
