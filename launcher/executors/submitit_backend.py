"""Slurm through ``submitit.AutoExecutor``: the same plan, for users who drive jobs from Python.

Each active stage is one submitit job with the plan's resources (``nodes``, ``tasks_per_node``, gres, time),
the rendezvous of templates/_rendezvous.sh.j2 as ``slurm_setup`` lines, the Pyxis flags as ``slurm_srun_args``
and ``afterok`` dependencies (``singleton`` too for the train job) in ``slurm_additional_parameters``. Every
task runs ``StageTask``: the same ``bash -c`` wrapper and stage script that templates/train.sbatch.j2 starts.

Requeue: submitit requeues only a ``Checkpointable`` on its own USR2 and has no notion of a configuration error.
``StageTask`` instead does what the sbatch template does: Slurm sends SIGUSR1 to every process of the step
``signal_seconds`` before the limit, the trainer checkpoints and exits 0, and rank 0 requeues the job while
``SLURM_RESTART_COUNT < max_requeues``; an exit status 2 (configuration error) fails the job, never requeued.
Node failures are requeued by Slurm (``--requeue``) and bounded by the same restart count.

Limits: the job's Python must import submitit (with a Pyxis container: the image needs it), and submitit's
per-task logs live in ``<run_dir>/submitit/<stage>/``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from launcher.executors.slurm import SlurmJobs
from launcher.manifest import Manifest
from launcher.plan import LaunchPlan, Stage
from launcher.sbatch import job_name, raw_srun_args, rendezvous_lines, stage_gres, task_command, whole_node

EXIT_CONFIG_ERROR = 2


def time_minutes(t: str) -> int:
    """Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in whole minutes, rounded up."""
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(x) for x in t.split(":")] + [0, 0]
        h, m, s = parts[:3]
    else:
        parts = [int(x) for x in t.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def submitit_parameters(plan: LaunchPlan, stage: Stage, dependency: str | None) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for one stage (pure)."""
    sl = plan.profile.slurm
    if sl is None:
        raise ValueError(f"{plan.cluster}: the submitit backend needs a Slurm profile")
    r = stage.resources
    gpu = r.kind == "gpu"
    add: dict[str, Any] = {"open-mode": "append"}
    if gpu and whole_node(plan, stage):
        # submitit's default is USR2 to every step process; our trainers checkpoint on USR1 (as in train.sbatch)
        add["signal"] = f"USR1@{sl.signal_seconds}"
        add["requeue"] = True
    else:
        add["no-requeue"] = True
    if dependency:
        add["dependency"] = dependency
    add.update(sl.additional_parameters)
    params: dict[str, Any] = dict(
        name=job_name(plan, stage),
        nodes=r.nodes,
        tasks_per_node=r.ntasks_per_node,
        cpus_per_task=r.cpus_per_task,
        timeout_min=time_minutes(r.time or sl.time),
        slurm_partition=r.partition,
        slurm_account=sl.account,
        slurm_setup=rendezvous_lines() if gpu else [],
        slurm_srun_args=raw_srun_args(plan, stage),
        slurm_additional_parameters=add,
        slurm_stderr_to_stdout=True,  # one log per task: what `cpt-launch logs` prints
    )
    if gpu:
        params["slurm_gres"] = stage_gres(plan, stage)
        if sl.exclusive and whole_node(plan, stage):  # not for the one-GPU evaluate stage
            params["slurm_exclusive"] = True
        if sl.mem and whole_node(plan, stage):
            params["slurm_mem"] = sl.mem
    if sl.qos:
        params["slurm_qos"] = sl.qos
    if sl.constraint:
        params["slurm_constraint"] = sl.constraint
    return params


@dataclass
class StageTask:
    """What every srun task of a submitit job runs: the stage's task command, with the template's requeue rule."""

    command: list[str]
    max_requeues: int
    requeue_on_signal: bool
    _stop: list[int] = field(default_factory=list, repr=False)

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._stop.append(signum)  # the trainer got the signal too (Slurm signals every process of the step)

    def __call__(self) -> int:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restart > self.max_requeues:
            raise RuntimeError(f"retry limit reached ({restart} restarts > {self.max_requeues}); "
                               "to continue: cpt-launch --resume")
        signal.signal(signal.SIGUSR1, self._on_usr1)
        rc = subprocess.call(self.command)
        if rc == EXIT_CONFIG_ERROR:
            raise RuntimeError("configuration error (exit 2): not requeued; fix the configuration and resubmit")
        if rc != 0:
            raise RuntimeError(f"the stage exited with status {rc}")
        if self._stop and self.requeue_on_signal:
            rank = int(os.environ.get("SLURM_PROCID", "0"))
            if restart >= self.max_requeues:
                raise RuntimeError(f"checkpoint saved, retry limit reached ({self.max_requeues} requeues): "
                                   "stopping; to continue: cpt-launch --resume")
            if rank == 0:
                print(f"[cpt-launch] checkpoint saved: requeueing job {os.environ.get('SLURM_JOB_ID')} "
                      f"(restart {restart + 1} of {self.max_requeues})", file=sys.stderr, flush=True)
                subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True)
        return rc


class SubmititBackend(SlurmJobs):
    name = "submitit"

    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        import submitit  # light (no torch), but only needed here

        sl = plan.profile.slurm
        ids: dict[str, str] = {}
        for stage in plan.active_stages:
            deps = [ids[d] for d in stage.depends_on if d in ids]
            dep = ("afterok:" + ":".join(deps)) if deps else ""
            # the trainer on whole nodes: singleton, the task wrapper, requeue on signal (not the one-GPU evaluate)
            gpu = stage.resources.kind == "gpu" and whole_node(plan, stage)
            if gpu:
                dep = f"{dep},singleton" if dep else "singleton"
            ex = submitit.AutoExecutor(folder=Path(plan.run_dir) / "submitit" / stage.name, cluster="slurm")
            ex.update_parameters(**submitit_parameters(plan, stage, dep or None))
            task = StageTask(command=task_command(plan, stage) if gpu else ["bash", stage.job_script_path],
                             max_requeues=sl.max_requeues if sl else 0, requeue_on_signal=gpu)
            job = ex.submit(task)
            ids[stage.name] = str(job.job_id)
            rec = manifest.stages[stage.name]
            rec.job_id, rec.state = str(job.job_id), "PENDING"
            rec.log = str(job.paths.stdout)  # task 0's log (submitit writes one per task)
            manifest.save()
        return manifest

