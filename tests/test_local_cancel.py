"""`cpt-launch cancel RUN` on a machine without Slurm (single-node profile: torchrun under nemo_run's LocalExecutor).

torchrun starts its workers in their own sessions, so killing the launcher's or torchrun's process group does
not reach them: a cancel that stops only the launcher would leave workers holding the GPUs. Here a real launcher
process (forked) runs the single-node plan's train stage -- the plan's own torchrun command with the trainer
replaced by ``launcher.stages.selftest train-loop`` (gloo, 2 CPU workers) -- and the test cancels it from another
"shell" (this process, through the CLI) and checks that every process of the stage is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from launcher.plan import LaunchPlan, Overrides, PlanContext, build_plan, render_stage_script
from launcher.profiles import parse_profile
from tests.fixtures.processes import wait_for_lines

ROOT = Path(__file__).resolve().parents[1]


def single_node_plan(tmp: Path, run: str) -> LaunchPlan:
    d = yaml.safe_load((ROOT / "clusters" / "single-node.yaml").read_text())
    d["storage"] = {k: {"host": str(tmp / k)} for k in ("runs", "models", "data", "hf_cache")}
    src = tmp / "single-node-test.yaml"
    src.write_text(yaml.safe_dump(d))
    profile = parse_profile(src.read_text(), str(src))
    ov = Overrides(run_name=run, model="llama3.2-1b", gbs=8, seq_length=1024, data=("ja_text_document",),
                   valid_data=("ja_valid_text_document",))
    ctx = PlanContext(code_dir=str(ROOT), command="pytest tests/test_local_cancel.py", run_name=run,
                      python=sys.executable)
    return build_plan(profile, ov, ctx)


def with_selftest_trainer(plan: LaunchPlan, selftest_args: list[str]) -> LaunchPlan:
    """The train stage alone; its torchrun command kept (2 workers, torchrun as a module of this Python), the
    trainer module replaced by the selftest loop."""
    train = plan.stage("train")
    cmd = list(train.command)
    assert cmd[0] == "torchrun" and "--standalone" in cmd, cmd
    m = cmd.index("-m")
    launcher = [sys.executable, "-m", "torch.distributed.run"] + [
        "--nproc-per-node=2" if a.startswith("--nproc-per-node") else a for a in cmd[1:m]]
    new = [*launcher, "-m", "launcher.stages.selftest", *selftest_args]
    script = render_stage_script(run=plan.run, stage="train", cmds=[new], env={**plan.env, "NODE_RANK": "0"},
                                 secrets=plan.secrets, workdir=plan.job_run_dir, command=plan.command)
    stage = dataclasses.replace(train, script=script, command=tuple(new), depends_on=())
    return dataclasses.replace(plan, stages=(stage,))


def _submit(plan: LaunchPlan) -> None:  # the launcher process: what `cpt-launch --cluster single-node` runs
    from launcher.executors.local import NemoRunLocal
    from launcher.manifest import write_run_dir

    backend = NemoRunLocal()
    try:
        backend.submit(plan, write_run_dir(plan, backend.name))
    except KeyboardInterrupt:
        os._exit(130)
    os._exit(0)


def _procs_with(marker: str) -> list[str]:
    """'PID command line' of every live (not zombie) process whose command line contains ``marker``."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmd and state != "Z":
            found.append(f"{d} {cmd}")
    return found


@pytest.mark.parametrize("how", ["cli", "sigterm"])
def test_cancel_stops_every_torchrun_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """`cpt-launch cancel RUN` from another shell, or SIGTERM to the launcher (`kill PID`; Ctrl-C takes the same
    path when the launcher runs in the foreground): the launcher records CANCELLED and returns, and no process of
    the stage -- torchrun or either worker -- is left."""
    from launcher.cli import main
    from launcher.executors.local import NemoRunLocal

    monkeypatch.setattr(NemoRunLocal, "grace_s", 10.0)

    run = f"cancel-{os.getpid()}-{int(time.time() * 1000) % 10**7}"
    steps = tmp_path / "steps.log"
    (tmp_path / "base.json").write_text(json.dumps({"value": 1.0}))
    plan = with_selftest_trainer(single_node_plan(tmp_path, run), [
        "train-loop", "--ckpt-dir", str(tmp_path / "ckpt" / run), "--base", str(tmp_path / "base.json"),
        "--steps", "100000", "--ckpt-every", "1000", "--step-seconds", "0.2", "--step-log", str(steps)])
    marker = str(tmp_path / "ckpt" / run)  # on every process of the stage: torchrun and both workers
    child = multiprocessing.get_context("fork").Process(target=_submit, args=(plan,))
    child.start()
    try:
        wait_for_lines(steps, 3, child.is_alive, "the workers never stepped")
        workers = [p for p in _procs_with(marker) if "launcher.stages.selftest" in p]
        assert len(workers) >= 3, workers  # torchrun + 2 workers

        run_dir = Path(plan.run_dir)
        capsys.readouterr()
        if how == "cli":
            assert main(["cancel", str(run_dir)]) == 0
            assert "train" in capsys.readouterr().out
        else:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGTERM)
        child.join(60)
        assert not child.is_alive(), "the launcher did not stop on cancel"
        assert child.exitcode == 0  # it returned normally, after recording the state
        deadline = time.time() + 30
        while time.time() < deadline and _procs_with(marker):
            time.sleep(0.5)
        left = _procs_with(marker)
        assert not left, f"processes of the cancelled stage still running: {left}"
        n = len(steps.read_text().splitlines())
        time.sleep(1.0)
        assert len(steps.read_text().splitlines()) == n  # nothing steps any more
        assert main(["status", str(run_dir), "--json"]) == 0
        state = json.loads(capsys.readouterr().out)["stages"]["train"]["state"]
        assert state == "CANCELLED", state
    finally:
        if child.is_alive():
            child.kill()
        for ln in _procs_with(marker):
            with contextlib.suppress(OSError):
                os.kill(int(ln.split()[0]), signal.SIGKILL)
