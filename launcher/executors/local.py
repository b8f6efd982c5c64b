"""This machine, through nemo_run's LocalExecutor (host) or DockerExecutor (a local container).

Stages run one after another, each only if the ones it depends on succeeded (afterok). The run blocks; its
manifest is updated after every stage so `cpt-launch status RUN` in another shell shows progress.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import signal
import time
from pathlib import Path
from typing import Any

from launcher.executors.base import OK_STATES, TERMINAL, Backend
from launcher.manifest import Manifest
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

    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        nr_home = Path(plan.run_dir) / "nemorun"  # not "nemo_run": nemo_run rewrites "/nemo_run" in paths
        os.environ["NEMORUN_HOME"] = str(nr_home)  # read by nemo_run at import
        import nemo_run as run  # heavy (imports torch): only when running
        from nemo_run.config import set_nemorun_home

        set_nemorun_home(str(nr_home))  # in case nemo_run was imported before NEMORUN_HOME was set
        failed: str | None = None
        for stage in plan.active_stages:
            rec = manifest.stages[stage.name]
            if failed is not None or any(manifest.stages[d].state not in OK_STATES for d in stage.depends_on):
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
            manifest.save()
            t0 = time.time()
            try:
                with contextlib.redirect_stdout(sys.stderr), \
                        run.Experiment(f"{plan.run}-{stage.name}", log_level="WARN") as exp:
                    exp.add(run.Script(inline=stage_inline(stage, job_log)), executor=ex, name=stage.name)
                    exp.run(sequential=True, detach=False, tail_logs=False)
                # the Experiment waits for its jobs when the `with` block exits: read the state after it
                state = str(exp.jobs[0].state).split(".")[-1].upper()
            except BaseException:  # Ctrl-C or nemo_run/docker refusing: nothing after this stage may run
                rec.state = "FAILED"
                for other in manifest.stages.values():
                    if other.state == "PENDING":
                        other.state = "CANCELLED"
                manifest.save()
                raise
            rec.state = "COMPLETED" if state == "SUCCEEDED" else "FAILED"
            rec.exit_code = 0 if rec.state == "COMPLETED" else 1
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
        return manifest

    def cancel(self, manifest: Manifest) -> list[str]:
        out = []
        for r in manifest.stages.values():
            if r.state == "RUNNING" and r.job_id and r.job_id.startswith("local:"):
                pid = int(r.job_id.split(":")[1])
                if _alive(pid):
                    os.kill(pid, signal.SIGINT)
                out.append(r.name)
            elif r.state not in TERMINAL:
                r.state = "CANCELLED"
                out.append(r.name)
        manifest.save()
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _job_path(plan: LaunchPlan, host_path: str) -> str:
    from launcher.plan import _to_job_path

    return _to_job_path(host_path, plan.profile)
