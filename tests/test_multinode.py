"""Multi-node launch, proven on the real 4-node Slurm test cluster (.ci/slurm/cluster.sh).

Every job here is the train stage of a real plan, rendered by ``launcher.sbatch`` from templates/train.sbatch.j2
(or submitted by the submitit backend with the same rendezvous), whose task command is replaced by
``launcher.stages.selftest``: a CPU gloo program in place of the trainer, started exactly the way the trainer
is started. The host has 2 cores, so the test profiles ask for 1-2 tasks ("GPUs") per node.

Run: ``python -m pytest -m slurm tests/test_multinode.py`` (the cluster is brought up if needed).
"""

from __future__ import annotations

import dataclasses
import fcntl
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


def check_process_group(cluster: SlurmCluster, jid: str, name: str, out: Path, nodes: int,
                        tasks_per_node: int) -> None:
    r = json.loads(out.read_text())
    world = nodes * tasks_per_node
    assert r["problems"] == []
    assert r["world_size"] == world and r["nnodes"] == nodes
    assert r["allreduce_sum"] == world * (world + 1) / 2
    assert sorted(t["rank"] for t in r["tasks"]) == list(range(world))
    alloc = expand_nodes(cluster, job_rows(cluster, jid, name)[-1]["NodeList"])
    assert sorted({t["node"] for t in r["tasks"]}) == sorted(alloc) and len(alloc) == nodes
    # NODE_RANK/LOCAL_RANK come from each task's own Slurm environment; rank = node_rank * tpn + local_rank
    assert all(t["rank"] == t["node_rank"] * tasks_per_node + t["local_rank"] for t in r["tasks"])
    # MASTER_ADDR is the first node of the allocation (NodeAddr 127.0.0.1 here: node names are not in DNS)
    assert r["master"].startswith("127.0.0.1:")


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
    check_process_group(slurm_cluster, jid, name, out, nodes, tasks_per_node)
    assert "rendezvous 127.0.0.1:" in train_log(plan)


@pytest.mark.parametrize("nodes,tasks_per_node", [(2, 2), (4, 1)])
def test_submitit_backend_forms_one_process_group(slurm_cluster: SlurmCluster, tmp_path: Path, nodes: int,
                                                  tasks_per_node: int) -> None:
    from launcher.executors.submitit_backend import SubmititBackend
    from launcher.manifest import write_run_dir

    plan = make_plan(make_profile(tmp_path, gpus_per_node=tasks_per_node), nodes, unique(f"sub{nodes}"))
    out = tmp_path / "allreduce.json"
    plan = with_train_command(plan, ["allreduce", "--out", str(out)])
    backend = SubmititBackend()
    manifest = backend.submit(plan, write_run_dir(plan, backend.name))
    jid = manifest.stages["train"].job_id
    assert jid
    name = f"{plan.run}.train"
    state = wait_job(slurm_cluster, jid, name)
    log = Path(manifest.stages["train"].log)
    assert state == "COMPLETED", log.read_text() if log.exists() else "(no log)"
    check_process_group(slurm_cluster, jid, name, out, nodes, tasks_per_node)
    assert backend.refresh(manifest).stages["train"].state == "COMPLETED"


# ---- time limit / preemption, node failure, config error, retry limit ------------------------------------------

BASE_VALUE = 1000.0
STEP_RE = re.compile(r"attempt=(\d+) step=(\d+) value=(\S+)$")
RESUME_RE = re.compile(r"attempt=(\d+) resume source=(\w+) step=(\d+) value=(\S+) world=(\d+)$")
SAVED_RE = re.compile(r"attempt=(\d+) saved \S+--step=(\d+)-last$")


class Loop:
    """A train-loop job: the plan (train stage only), its emitted sbatch directory, step log and checkpoints."""

    def __init__(self, tmp: Path, prefix: str, *, nodes: int = 2, tasks_per_node: int = 1, steps: int = 30,
                 ckpt_every: int = 5, step_seconds: float = 0.3, max_requeues: int = 2,
                 extra: tuple[str, ...] = (), time_limit: str = "00:05:00", signal_seconds: int = 30) -> None:
        from launcher.executors.sbatch_backend import emit_sbatch

        plan = make_plan(make_profile(tmp, gpus_per_node=tasks_per_node, max_requeues=max_requeues,
                                      time_limit=time_limit, signal_seconds=signal_seconds), nodes, unique(prefix))
        self.ckpt_dir = Path(plan.stage("train").outputs["checkpoints"])
        self.step_log = tmp / "steps.log"
        base = tmp / "base.json"
        base.write_text(json.dumps({"value": BASE_VALUE}))
        self.steps, self.world = steps, nodes * tasks_per_node
        self.plan = with_train_command(plan, [
            "train-loop", "--ckpt-dir", str(self.ckpt_dir), "--base", str(base), "--steps", str(steps),
            "--ckpt-every", str(ckpt_every), "--step-seconds", str(step_seconds), "--log", str(self.step_log),
            *extra])
        self.sbatch = tmp / "emit" / "train.sbatch"
        emit_sbatch(self.plan, tmp / "emit")
        self.name = f"{self.plan.run}.train"
        self.jid = ""

    def submit(self, cluster: SlurmCluster) -> str:
        self.jid = cluster.sbatch(self.sbatch)
        return self.jid

    def lines(self) -> list[str]:
        return self.step_log.read_text().splitlines() if self.step_log.exists() else []

    def steps_of(self, attempt: int) -> list[int]:
        return [int(m.group(2)) for m in map(STEP_RE.match, self.lines()) if m and int(m.group(1)) == attempt]

    def resumes(self) -> list[tuple[int, str, int]]:
        return [(int(m.group(1)), m.group(2), int(m.group(3))) for m in map(RESUME_RE.match, self.lines()) if m]

    def saved(self, attempt: int) -> list[int]:
        return [int(m.group(2)) for m in map(SAVED_RE.match, self.lines()) if m and int(m.group(1)) == attempt]

    def expected_value(self, last_step: int) -> float:
        return BASE_VALUE + sum(range(1, last_step + 1)) * self.world * (self.world + 1) / 2

    def final_value(self) -> float:
        m = [STEP_RE.match(x) for x in self.lines()]
        return float([x for x in m if x][-1].group(3))

    def log(self) -> str:
        return train_log(self.plan) + "\n--- step log ---\n" + "\n".join(self.lines())


def test_warning_signal_checkpoints_requeues_and_resumes_without_lost_or_repeated_steps(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    loop = Loop(tmp_path, "usr1", nodes=2, tasks_per_node=1, steps=30, ckpt_every=5, step_seconds=0.3)
    jid = loop.submit(slurm_cluster)
    wait_for(lambda: len(loop.steps_of(0)) >= 7, 60, "attempt 0 to pass step 7")
    # What Slurm does signal_seconds before the time limit (#SBATCH --signal=B:USR1@N): USR1 to the batch shell.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", jid)
    state = wait_job(slurm_cluster, jid, loop.name, timeout=100)
    assert state == "COMPLETED", loop.log()
    first, second = loop.steps_of(0), loop.steps_of(1)
    stopped = first[-1]
    assert loop.saved(0)[-1] == stopped, loop.log()  # it checkpointed the step it stopped after
    assert loop.resumes() == [(0, "base_checkpoint", 0), (1, "own_checkpoint", stopped)], loop.log()
    assert first + second == list(range(1, loop.steps + 1)), loop.log()  # no step lost, none repeated
    assert loop.final_value() == loop.expected_value(loop.steps)
    slog = train_log(loop.plan)
    assert "requeueing job" in slog and "attempt 2 of at most 3" in slog
    assert [r["State"].split()[0] for r in job_rows(slurm_cluster, jid, loop.name)] == ["REQUEUED", "COMPLETED"]


def test_time_limit_warning_from_slurm_itself(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """No test-side signal: a 1-minute limit with --signal=B:USR1@50 (slurmctld checks limits about every 30 s,
    so the warning comes 10-40 s into each attempt). Each attempt checkpoints and stops before the limit; the
    first requeues itself, the second hits max_requeues=1 and ends, resumable, without a TIMEOUT."""
    loop = Loop(tmp_path, "tlimit", nodes=2, steps=100000, ckpt_every=1000, step_seconds=0.2, max_requeues=1,
                time_limit="00:01:00", signal_seconds=50)
    jid = loop.submit(slurm_cluster)
    state = wait_job(slurm_cluster, jid, loop.name, timeout=150)
    slog = train_log(loop.plan)
    assert state == "FAILED", loop.log()  # stopped itself at the retry limit, not killed at the time limit
    assert slog.count("SIGUSR1 (time limit or preemption ahead)") == 2, slog
    assert "retry limit reached (1 requeues)" in slog
    first, second = loop.steps_of(0), loop.steps_of(1)
    assert loop.resumes() == [(0, "base_checkpoint", 0), (1, "own_checkpoint", first[-1])], loop.log()
    assert first + second == list(range(1, second[-1] + 1))  # no step lost or repeated across the requeue
    assert loop.saved(1)[-1] == second[-1]  # the last stop saved too: `--resume` continues from there
    assert [r["State"].split()[0] for r in job_rows(slurm_cluster, jid, loop.name)] == ["REQUEUED", "FAILED"]


def test_config_error_is_not_requeued(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    loop = Loop(tmp_path, "cfgerr", nodes=2, extra=("--config-error",))
    jid = loop.submit(slurm_cluster)
    state = wait_job(slurm_cluster, jid, loop.name, timeout=60)
    rows = job_rows(slurm_cluster, jid, loop.name)
    assert state == "FAILED" and rows[-1]["ExitCode"] == "2:0", loop.log()
    time.sleep(2)  # would a requeue show up? (it would be REQUEUED/PENDING by now)
    rows = job_rows(slurm_cluster, jid, loop.name)
    assert len(rows) == 1 and rows[0]["State"] == "FAILED", rows
    assert "configuration error (exit 2): not requeued" in train_log(loop.plan)
    assert "attempt 2" not in train_log(loop.plan)


def test_retry_limit_holds_for_signal_requeues(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    loop = Loop(tmp_path, "limit", nodes=2, steps=400, ckpt_every=50, step_seconds=0.1, max_requeues=1)
    jid = loop.submit(slurm_cluster)
    for attempt in (0, 1):
        wait_for(lambda: len(loop.steps_of(attempt)) >= 3, 60, f"attempt {attempt} to run 3 steps")
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", jid)
    state = wait_job(slurm_cluster, jid, loop.name, timeout=60)
    slog = train_log(loop.plan)
    assert state == "FAILED", loop.log()
    assert "retry limit reached (1 requeues)" in slog, slog
    assert [r[0] for r in loop.resumes()] == [0, 1]  # two attempts, no third
    # the second stop still saved its step, so `--resume` later continues from there
    assert loop.saved(1)[-1] == loop.steps_of(1)[-1]
    assert loop.steps_of(0) + loop.steps_of(1) == list(range(1, loop.steps_of(1)[-1] + 1))


def test_retry_limit_holds_for_slurm_requeues(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # Slurm itself requeues on node failure; the script's guard bounds those restarts too (max_requeues=0).
    loop = Loop(tmp_path, "limit0", nodes=2, steps=400, ckpt_every=50, step_seconds=0.1, max_requeues=0)
    jid = loop.submit(slurm_cluster)
    wait_for(lambda: len(loop.steps_of(0)) >= 3, 60, "attempt 0 to run 3 steps")
    slurm_cluster.run("scontrol", "requeue", jid)  # as after a NODE_FAIL
    state = wait_job(slurm_cluster, jid, loop.name, timeout=60)
    assert state == "FAILED", loop.log()
    assert "retry limit reached (1 restarts > 0)" in train_log(loop.plan)
    assert [r[0] for r in loop.resumes()] == [0]  # the second attempt never started the trainer


def _job_nodes(cluster: SlurmCluster, jid: str) -> list[str]:
    q = cluster.run("squeue", "-h", "-j", jid, "-o", "%N", check=False).stdout.strip()
    return expand_nodes(cluster, q) if q else []


def _pids_of_job_on(jid: str, node: str) -> list[int]:
    """Task processes of job ``jid``'s first attempt on ``node`` (their environment says so)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(x.split("=", 1) for x in (d / "environ").read_text().split("\0") if "=" in x)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == jid and env.get("SLURMD_NODENAME") == node and \
                env.get("SLURM_RESTART_COUNT", "0") == "0":
            pids.append(int(d.name))
    return pids


def _node_state(cluster: SlurmCluster, node: str) -> str:
    """``scontrol show node``'s State, e.g. IDLE, MIXED, DOWN+NOT_RESPONDING."""
    out = cluster.run("scontrol", "show", "node", node, check=False).stdout
    m = re.search(r"\bState=(\S+)", out)
    return m.group(1) if m else ""


def test_node_failure_requeues_and_resumes_from_last_checkpoint(slurm_cluster: SlurmCluster,
                                                                 tmp_path: Path) -> None:
    loop = Loop(tmp_path, "nodefail", nodes=2, tasks_per_node=1, steps=120, ckpt_every=3, step_seconds=0.4)
    jid = loop.submit(slurm_cluster)
    wait_for(lambda: len(loop.steps_of(0)) >= 7, 60, "attempt 0 to pass step 7")
    nodes = _job_nodes(slurm_cluster, jid)
    assert len(nodes) == 2, nodes
    victim = nodes[-1]  # not the batch host: rank 0 (which writes the checkpoints) runs on the first node
    pidfile = slurm_cluster.root / "run" / f"slurmd-{victim}.pid"
    # While a node is down on purpose, hold the lock `.ci/slurm/cluster.sh up` takes: a concurrent test session
    # would otherwise find the cluster unhealthy and restart it under this test (and its own).
    lock = open(f"{slurm_cluster.root}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    slurmd_pid = int(pidfile.read_text().strip())
    t0 = time.monotonic()
    try:
        _kill_node_and_recover(slurm_cluster, loop, jid, victim, slurmd_pid)
    finally:
        lock.close()  # releases the flock
    _check_node_failure(slurm_cluster, loop, jid, victim)
    print(f"node {victim}: job finished {time.monotonic() - t0:.0f} s after its slurmd was killed")


def _kill_node_and_recover(slurm_cluster: SlurmCluster, loop: "Loop", jid: str, victim: str, slurmd_pid: int) -> None:
    t0 = time.monotonic()
    try:
        os.kill(slurmd_pid, signal.SIGKILL)  # the node's daemon dies; Slurm notices after SlurmdTimeout
        wait_for(lambda: "DOWN" in _node_state(slurm_cluster, victim), 60, f"{victim} to be DOWN")
        t_down = time.monotonic() - t0
        state = wait_job(slurm_cluster, jid, loop.name, timeout=90)
    finally:
        # the first attempt's task on the dead node has lost its peers; make sure it is gone, then bring the
        # node back (ReturnToService=2: it rejoins when its slurmd registers)
        for pid in _pids_of_job_on(jid, victim):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["slurmd", "-f", str(slurm_cluster.slurm_conf), "-N", victim], check=True,
                       env=slurm_cluster.env)
        wait_for(lambda: re.fullmatch(r"(IDLE|MIXED|ALLOCATED)", _node_state(slurm_cluster, victim)), 60,
                 f"{victim} to return to service")
    print(f"node {victim} DOWN {t_down:.0f} s after its slurmd was killed")
    assert state == "COMPLETED", loop.log()


def _check_node_failure(slurm_cluster: SlurmCluster, loop: "Loop", jid: str, victim: str) -> None:
    rows = job_rows(slurm_cluster, jid, loop.name)
    assert rows[0]["State"].split()[0] in ("NODE_FAIL", "REQUEUED"), rows
    assert victim not in expand_nodes(slurm_cluster, rows[-1]["NodeList"])
    last_ckpt = loop.saved(0)[-1]
    assert loop.resumes() == [(0, "base_checkpoint", 0), (1, "own_checkpoint", last_ckpt)], loop.log()
    # steps after the last checkpoint are redone (their result was never saved): resumed exactly after it
    assert loop.steps_of(0)[:last_ckpt] == list(range(1, last_ckpt + 1))
    assert loop.steps_of(1) == list(range(last_ckpt + 1, loop.steps + 1)), loop.log()
    assert loop.final_value() == loop.expected_value(loop.steps)  # no step applied twice or lost
    assert "attempt 2 of at most 3" in train_log(loop.plan)


def test_submitit_backend_requeues_on_the_warning_signal_and_resumes(slurm_cluster: SlurmCluster,
                                                                     tmp_path: Path) -> None:
    from launcher.executors.submitit_backend import SubmititBackend
    from launcher.manifest import write_run_dir

    loop = Loop(tmp_path, "subusr1", nodes=2, tasks_per_node=1, steps=30, ckpt_every=5, step_seconds=0.3)
    backend = SubmititBackend()
    manifest = backend.submit(loop.plan, write_run_dir(loop.plan, backend.name))
    jid = manifest.stages["train"].job_id
    assert jid
    wait_for(lambda: len(loop.steps_of(0)) >= 7, 60, "attempt 0 to pass step 7")
    # submitit's batch script has no trap: --signal=USR1@N (no B:) signals every process of the job's steps
    slurm_cluster.run("scancel", "--signal=USR1", jid)
    state = wait_job(slurm_cluster, jid, loop.name, timeout=100)
    log = Path(manifest.stages["train"].log)
    assert state == "COMPLETED", loop.log() + (log.read_text() if log.exists() else "")
    first, second = loop.steps_of(0), loop.steps_of(1)
    assert loop.resumes() == [(0, "base_checkpoint", 0), (1, "own_checkpoint", first[-1])], loop.log()
    assert first + second == list(range(1, loop.steps + 1)), loop.log()
    assert loop.final_value() == loop.expected_value(loop.steps)
    assert [r["State"].split()[0] for r in job_rows(slurm_cluster, jid, loop.name)] == ["REQUEUED", "COMPLETED"]


# ---- the CLI against the cluster: submit with --backend, status, logs, cancel -----------------------------------


def _cli_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    make_profile(tmp_path, gpus_per_node=2)
    model = tmp_path / "model"
    model.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model / f).write_text("{}")
    (model / "model.safetensors").write_bytes(b"")  # "complete" for the download stage: it has nothing to do
    # the profile's data globs must match files (checked before submission); the job's tokenize then fails on
    # the fake tokenizer.json above
    (tmp_path / "data" / "ja").mkdir(parents=True)
    for name in ("train_0.jsonl", "valid_0.jsonl"):
        (tmp_path / "data" / "ja" / name).write_text('{"text": "日本語の文です。"}\n')
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "test-mn.yaml", model


def _cli_args(profile: Path, model: Path, run: str, backend: str) -> list[str]:
    return ["--cluster", str(profile), "--run-name", run, "--model", "llama3.2-1b", "--gbs", "8",
            "--seq-length", "1024", "--model-dir", str(model), "--backend", backend, "--num-layers", "2"]


def _status(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    from launcher.cli import main

    assert main(["status", str(run_dir), "--json"]) == 0
    return {k: v["state"] for k, v in json.loads(capsys.readouterr().out)["stages"].items()}


@pytest.mark.parametrize("backend", ["sbatch", "submitit"])
def test_cli_pipeline_afterok_status_and_logs(slurm_cluster: SlurmCluster, tmp_path: Path, backend: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The whole pipeline through `cpt-launch --backend ...`: download is skipped (--model-dir), tokenize fails
    (its tokenizer is fake), so train, export and evaluate never start (afterok); status and logs read the manifest's
    job ids."""
    from launcher.cli import main

    profile, model = _cli_setup(tmp_path, monkeypatch)
    run = unique(f"cli-{backend}")
    assert main(_cli_args(profile, model, run, backend)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run {run}"
    ids = {ln.split()[0]: ln.split()[1] for ln in out[1:]}
    assert set(ids) == {"convert", "tokenize", "train", "export", "evaluate"} and all(
        i.isdigit() for i in ids.values())
    run_dir = tmp_path / "runs" / run
    states = wait_for(lambda: (lambda s: s if all(v in TERMINAL_STATES for v in s.values()) else None)(
        _status(run_dir, capsys)), 100, "every stage to end")
    assert "download" not in states and states["tokenize"] == "FAILED"
    assert states["train"] == "CANCELLED" and states["export"] == "CANCELLED"  # never started: afterok
    assert states["convert"] in ("COMPLETED", "FAILED")  # fake weights
    assert main(["logs", str(run_dir), "--stage", "tokenize"]) == 0
    assert "tokenize" in capsys.readouterr().out


def test_cli_cancel(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main

    profile, model = _cli_setup(tmp_path, monkeypatch)
    run = unique("cli-cancel")
    assert main(_cli_args(profile, model, run, "sbatch")) == 0
    capsys.readouterr()
    run_dir = tmp_path / "runs" / run
    assert main(["cancel", str(run_dir)]) == 0
    cancelled = capsys.readouterr().out
    assert "train" in cancelled and "export" in cancelled
    states = wait_for(lambda: (lambda s: s if all(v in TERMINAL_STATES for v in s.values()) else None)(
        _status(run_dir, capsys)), 60, "every stage to end")
    assert states["train"] == "CANCELLED" and states["export"] == "CANCELLED"
    # a second launch of the same run name is refused; --resume would continue it
    assert main(_cli_args(profile, model, run, "sbatch")) == 2


def test_two_submissions_of_one_run_never_overlap(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """`sbatch train.sbatch` twice (a user resubmits by hand): --dependency=singleton makes the second wait until
    the first has ended, so two jobs never write the run's checkpoint directory at once."""
    loop = Loop(tmp_path, "single", nodes=2, steps=15, ckpt_every=5, step_seconds=0.2)
    a, b = loop.submit(slurm_cluster), loop.submit(slurm_cluster)
    assert wait_job(slurm_cluster, a, loop.name) == "COMPLETED"
    assert wait_job(slurm_cluster, b, loop.name) == "COMPLETED"
    times = {}
    for jid in (a, b):
        out = slurm_cluster.run("sacct", "-n", "-X", "-P", "-j", jid, "-o", "JobName,Start,End").stdout
        row = [ln.split("|") for ln in out.splitlines() if ln.startswith(loop.name + "|")][-1]
        times[jid] = (row[1], row[2])
    assert times[b][0] >= times[a][1], times  # ISO timestamps: b started after a ended
    # the second job found the first one's final checkpoint and had nothing left to do
    assert loop.resumes()[-1][1:] == ("own_checkpoint", 15)


def test_submitit_backend_config_error_is_not_requeued(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.cli import main
    from launcher.executors.submitit_backend import SubmititBackend
    from launcher.manifest import write_run_dir

    loop = Loop(tmp_path, "subcfg", nodes=2, extra=("--config-error",))
    backend = SubmititBackend()
    manifest = backend.submit(loop.plan, write_run_dir(loop.plan, backend.name))
    jid = manifest.stages["train"].job_id
    assert jid
    assert wait_job(slurm_cluster, jid, loop.name, timeout=60) == "FAILED"
    time.sleep(2)
    assert [r["State"] for r in job_rows(slurm_cluster, jid, loop.name)] == ["FAILED"]
    # whichever task exited first (srun then kills the others), `cpt-launch logs` shows its error
    logs = sorted(Path(manifest.stages["train"].log).parent.glob(f"{jid}_*_log.out"))
    assert len(logs) == 2
    assert any("configuration error (exit 2): not requeued" in p.read_text() for p in logs)
    capsys.readouterr()
    assert main(["logs", loop.plan.run_dir, "--stage", "train"]) == 0
    assert "configuration error (exit 2): not requeued" in capsys.readouterr().out
