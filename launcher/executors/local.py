"""This machine, through nemo_run's LocalExecutor (host) or DockerExecutor (a local container).

Stages run one after another, each only if the ones it depends on succeeded (afterok). The run blocks; its
manifest is updated after every stage so `cpt-launch status RUN` in another shell shows progress.

Cancel (`cpt-launch cancel RUN` from any shell, or Ctrl-C / SIGTERM to the launcher): signalling the launcher is not
enough. nemo_run runs each stage in a new session, torchrun starts every worker in a session of its own, and the
launcher's wait ignores SIGINT when it was started in the background. Every stage script exports
``CPT_RUN_DIR``, which each process of the stage inherits, whatever its session: cancel finds those processes in
``/proc``, sends SIGTERM (torchrun passes it on, Lightning stops at the next step), SIGKILLs what is left after a
grace period, and leaves a ``cancel-requested`` file so that the launcher records CANCELLED and starts nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import signal
import time
from pathlib import Path
from typing import Any, Iterable

from launcher.executors.base import OK_STATES, TERMINAL, Backend
from launcher.manifest import Manifest, failure_reason
from launcher.plan import LaunchPlan, Stage


def docker_executor_kwargs(plan: LaunchPlan) -> dict[str, Any]:
    prof = plan.profile
    dk = prof.docker
    assert dk is not None and plan.container_image is not None  # the profile loader guarantees both
    return dict(
        container_image=plan.container_image,
        num_gpus=dk.num_gpus if dk.runtime else None,
        runtime=dk.runtime,
        shm_size=dk.shm_size,
        ulimits=list(dk.ulimits),
        ipc_mode=dk.ipc_mode,
        network=dk.network,
        volumes=[f"{h}:{c}" for h, c in plan.mounts],
    )


def stage_inline(stage: Stage, job_log: str) -> str:
    """The inline script nemo_run runs: the stage script, its output also appended to the stage log."""
    return (f"set -o pipefail; mkdir -p {shlex.quote(os.path.dirname(job_log))}; "
            f"bash {shlex.quote(stage.job_script_path)} 2>&1 | tee -a {shlex.quote(job_log)}")


class NemoRunLocal(Backend):
    def __init__(self, docker: bool = False):
        self.docker = docker
        self.name = "nemo-run-docker" if docker else "nemo-run-local"

    grace_s: float = 30.0  # cancel: SIGTERM, then SIGKILL after this many seconds

    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        marker = Path(plan.run_dir) / CANCEL_FILE
        marker.unlink(missing_ok=True)  # a --resume of a cancelled run starts clean
        job_dir = dict(plan.env).get("CPT_RUN_DIR", plan.run_dir)

        def on_signal(signum: int, frame: Any) -> None:  # Ctrl-C / SIGTERM to the launcher: cancel the run
            print(f"[cpt-launch] {signal.Signals(signum).name}: stopping run {plan.run}", file=sys.stderr)
            request_cancel(plan.run_dir, job_dir, self.grace_s)

        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig, old in before.items():
            if old is not signal.SIG_IGN:  # started with '&': SIGINT stays ignored (cancel still works)
                signal.signal(sig, on_signal)
        try:
            return self._run_stages(plan, manifest, marker)
        finally:
            for sig, old in before.items():
                signal.signal(sig, old)

    def _run_stages(self, plan: LaunchPlan, manifest: Manifest, marker: Path) -> Manifest:
        nr_home = Path(plan.run_dir) / "nemorun"  # not "nemo_run": nemo_run rewrites "/nemo_run" in paths
        os.environ["NEMORUN_HOME"] = str(nr_home)  # read by nemo_run at import
        import nemo_run as run  # heavy (imports torch): only when running
        from nemo_run.config import set_nemorun_home

        set_nemorun_home(str(nr_home))  # in case nemo_run was imported before NEMORUN_HOME was set
        failed: str | None = None
        for stage in plan.active_stages:
            rec = manifest.stages[stage.name]
            if marker.exists() or failed is not None or \
                    any(manifest.stages[d].state not in OK_STATES for d in stage.depends_on):
                rec.state = "CANCELLED"  # afterok: a dependency did not succeed
                manifest.save()
                continue
            job_log = _job_path(plan, stage.log_path)
            if self.docker:
                # nemo_run serialises the executor (env_vars included) into the run dir, and Docker's API takes
                # values, not names: so secrets are NOT forwarded into the container. Fill the HF cache / model
                # directory first (or use executor=local / slurm), and say so rather than write a token to disk.
                held = [s for s in plan.secrets if os.environ.get(s)]
                if held and stage.name == plan.active_stages[0].name:
                    print(f"[cpt-launch] docker: {', '.join(held)} not forwarded into the container (never written "
                          "to disk); stages needing them must find the model/cache already present", file=sys.stderr)
                ex: Any = run.DockerExecutor(packager=run.Packager(), job_dir=str(nr_home / "jobs"),
                                             **docker_executor_kwargs(plan))
            else:
                ex = run.LocalExecutor(packager=run.Packager())
            rec.state = "RUNNING"
            rec.job_id = f"local:{os.getpid()}:{stage.name}"
            t0 = rec.started = time.time()
            manifest.save()
            try:
                with contextlib.redirect_stdout(sys.stderr), \
                        run.Experiment(f"{plan.run}-{stage.name}", log_level="WARN") as exp:
                    exp.add(run.Script(inline=stage_inline(stage, job_log)), executor=ex, name=stage.name)
                    exp.run(sequential=True, detach=False, tail_logs=False)
                # the Experiment waits for its jobs when the `with` block exits: read the state after it
                state = str(exp.jobs[0].state).split(".")[-1].upper()
            except BaseException as e:  # Ctrl-C or nemo_run/docker refusing: nothing after this stage may run
                rec.state, rec.ended = "FAILED", time.time()
                rec.reason = f"the launcher stopped: {type(e).__name__}: {e}"[:300]
                for other in manifest.stages.values():
                    if other.state == "PENDING":
                        other.state = "CANCELLED"
                manifest.save()
                raise
            rec.ended = time.time()
            rec.state = "COMPLETED" if state == "SUCCEEDED" else "CANCELLED" if marker.exists() else "FAILED"
            rec.exit_code = 0 if rec.state == "COMPLETED" else 1
            if rec.state == "FAILED":
                rec.reason = failure_reason(job_log if os.path.exists(job_log) else stage.log_path) or \
                    f"nemo_run state {state}; see {stage.log_path}"
            elif rec.state == "CANCELLED":
                rec.reason = "cancelled (cpt-launch cancel, Ctrl-C or SIGTERM)"
            manifest.save()
            print(f"[cpt-launch] stage {stage.name}: {rec.state} in {time.time() - t0:.1f}s (log {stage.log_path})",
                  file=sys.stderr)
            if rec.state != "COMPLETED":
                failed = stage.name
        return manifest

    def refresh(self, manifest: Manifest) -> Manifest:
        for r in manifest.stages.values():
            if r.state == "RUNNING" and r.job_id and r.job_id.startswith("local:"):
                pid = int(r.job_id.split(":")[1])
                if not _alive(pid):
                    r.state = "FAILED"  # the launcher died before recording the end
                    r.reason = (f"the launcher (pid {pid}) ended without recording the stage's end (killed?)"
                                + (f"; its log says: {why}" if (why := failure_reason(r.log)) else ""))
        return manifest

    def cancel(self, manifest: Manifest) -> list[str]:
        out = []
        running = [r for r in manifest.stages.values() if r.state == "RUNNING"]
        launchers = {int(r.job_id.split(":")[1]) for r in running if r.job_id and r.job_id.startswith("local:")}
        if running:
            request_cancel(manifest.run_dir, _job_run_dir(manifest.run_dir), self.grace_s, exclude=launchers)
        for r in manifest.stages.values():
            if r in running:
                out.append(r.name)
                if not any(_alive(p) for p in launchers):
                    r.state = "CANCELLED"  # no launcher left to record it
            elif r.state not in TERMINAL:
                r.state = "CANCELLED"
                out.append(r.name)
        manifest.save()
        return out


CANCEL_FILE = "cancel-requested"


def _job_run_dir(run_dir: str) -> str:
    """The run directory as the stage processes see it (their CPT_RUN_DIR), from the run's plan.json."""
    try:
        env = json.loads((Path(run_dir) / "plan.json").read_text()).get("env", {})
        return str(env.get("CPT_RUN_DIR") or run_dir)
    except (OSError, ValueError):
        return run_dir


def stage_processes(job_run_dir: str, exclude: Iterable[int] = ()) -> list[int]:
    """Live processes of this machine whose environment holds ``CPT_RUN_DIR=job_run_dir`` (this user's, or all
    when root): the stage scripts, torchrun and its workers, whatever session they run in."""
    key = f"CPT_RUN_DIR={job_run_dir}".encode()
    me = {os.getpid(), *exclude}
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in me:
            continue
        try:
            if key in Path(f"/proc/{d}/environ").read_bytes().split(b"\0") and not _zombie(int(d)):
                found.append(int(d))
        except OSError:  # gone, or another user's
            continue
    return found


def request_cancel(run_dir: str, job_run_dir: str, grace_s: float, exclude: Iterable[int] = ()) -> list[int]:
    """Mark the run cancelled, SIGTERM every process of its stages, SIGKILL what is left after ``grace_s``."""
    (Path(run_dir) / CANCEL_FILE).write_text(f"{time.time():.3f}\n")
    pids = stage_processes(job_run_dir, exclude)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_alive(p) and not _zombie(p) for p in pids):
        time.sleep(0.2)
    for p in stage_processes(job_run_dir, exclude):  # what ignored SIGTERM, and anything started meanwhile
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _job_path(plan: LaunchPlan, host_path: str) -> str:
    from launcher.plan import _to_job_path

    return _to_job_path(host_path, plan.profile)
