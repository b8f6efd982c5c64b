"""Slurm through nemo_run's SlurmExecutor: one sbatch per stage, chained afterok, Pyxis flags on srun."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from launcher.executors.base import TERMINAL, Backend
from launcher.manifest import Manifest
from launcher.plan import LaunchPlan, Stage
from launcher.sbatch import stage_gres, whole_node


def slurm_executor_kwargs(plan: LaunchPlan, stage: Stage) -> dict[str, Any]:
    """The SlurmExecutor fields for one stage (pure; the golden-file tests render them through nemo_run)."""
    prof = plan.profile
    sl = prof.slurm
    assert sl is not None  # the profile loader guarantees it for executor=slurm
    r = stage.resources
    gpu = r.kind == "gpu"
    kw: dict[str, Any] = dict(
        account=sl.account,
        partition=r.partition,
        time=r.time or sl.time,
        nodes=r.nodes,
        ntasks_per_node=r.ntasks_per_node,
        cpus_per_task=r.cpus_per_task,
        gres=stage_gres(plan, stage) if gpu else None,
        # whole-node settings only for stages that use whole nodes (not the one-GPU evaluate stage)
        exclusive=(sl.exclusive or None) if gpu and whole_node(plan, stage) else None,
        mem=sl.mem if gpu and whole_node(plan, stage) else None,
        qos=sl.qos,
        constraint=sl.constraint,
        srun_args=list(sl.srun_args),
        job_name_prefix=f"{plan.run}.",
        # Secrets: the job inherits them from the submitting environment (sbatch exports it); in a Pyxis
        # container --container-env makes them win over the image's values. Only NAMES are written.
        container_env=list(plan.secrets) if plan.container_image else None,
        additional_parameters=dict(sl.additional_parameters) or None,
        poll_estimated_start_time=False,
        dependency_type="afterok",
    )
    if gpu and sl.signal_seconds and whole_node(plan, stage):  # the trainer's checkpoint-and-requeue signal
        kw["signal"] = f"USR1@{sl.signal_seconds}"
    if plan.container_image:
        kw["container_image"] = plan.container_image
        kw["container_mounts"] = [f"{h}:{c}" for h, c in plan.mounts]
    return kw


def stage_task_command(stage: Stage) -> str:
    """What srun runs in each task: the stage's script, its output appended to the stage log."""
    return f"bash {stage.job_script_path}"


class SlurmJobs(Backend):
    """State and cancellation of stages that are Slurm jobs: shared by every Slurm backend (nemo_run, sbatch,
    submitit), since each records plain Slurm job ids in the manifest."""

    def refresh(self, manifest: Manifest) -> Manifest:
        ids = [r.job_id for r in manifest.stages.values() if r.job_id]
        if not ids:
            return manifest
        states = sacct_states(ids)
        times = sacct_times(ids)
        for r in manifest.stages.values():
            if r.job_id in states:
                r.state, r.exit_code = states[r.job_id]
            if r.job_id in times:
                r.submitted, r.started, r.ended = times[r.job_id]
        manifest.save()
        return manifest

    def cancel(self, manifest: Manifest) -> list[str]:
        self.refresh(manifest)
        live = [r for r in manifest.stages.values() if r.job_id and r.state not in TERMINAL]
        if live:
            subprocess.run(["scancel", *[r.job_id for r in live if r.job_id]], check=True)
        return [r.name for r in live]


    def rollback(self, plan: LaunchPlan) -> list[str]:
        """Every job of this run still queued or running, found by name (``<run>.<stage>``, as every Slurm backend
        names its jobs; a run name is used by one submission at a time: the CLI refuses a second one while jobs of
        the first live), cancelled."""
        from launcher.sbatch import job_name

        names = ",".join(job_name(plan, s) for s in plan.active_stages)
        q = subprocess.run(["squeue", "-h", "-o", "%i", "--name", names], capture_output=True, text=True)
        ids = q.stdout.split()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, text=True)
        return ids


class NemoRunSlurm(SlurmJobs):
    name = "nemo-run-slurm"

    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        nr_home = Path(plan.run_dir) / "nemorun"  # not "nemo_run": nemo_run rewrites "/nemo_run" in paths
        # nemo_run reads NEMORUN_HOME when imported: keep its state in the run dir, not ~/.nemo_run
        os.environ["NEMORUN_HOME"] = str(nr_home)
        import nemo_run as run  # heavy (imports torch): only when submitting
        from nemo_run.config import set_nemorun_home

        set_nemorun_home(str(nr_home))  # in case nemo_run was imported before NEMORUN_HOME was set
        handles: dict[str, Any] = {}
        # nemo_run's tunnel (invoke) copies our stdin to every command it runs; it must never wait on it.
        with open(os.devnull) as devnull, contextlib.redirect_stdout(sys.stderr), _stdin(devnull), \
                run.Experiment(plan.run, log_level="WARN") as exp:
            for stage in plan.active_stages:
                # One tunnel per executor: nemo_run's LocalTunnel._set_job_dir appends to the job dir it holds, so a
                # shared tunnel nests each stage's directory inside the previous one's. job_dir="" = under
                # NEMORUN_HOME/experiments, which is where nemo_run also writes the sbatch files it submits.
                ex = run.SlurmExecutor(tunnel=run.LocalTunnel(job_dir=""), packager=run.Packager(),
                                       **slurm_executor_kwargs(plan, stage))
                deps = [handles[d] for d in stage.depends_on if d in handles]
                handles[stage.name] = exp.add(run.Script(inline=stage_task_command(stage)), executor=ex,
                                              name=stage.name, dependencies=deps or None)
            exp.run(detach=True)
            for job in exp.jobs:
                rec = manifest.stages[job.id]
                rec.job_id = _job_id(job.handle)
                rec.state = "PENDING"
                folder = job.executor.job_details.folder
                rec.log = str(Path(folder) / f"log-{job.executor.job_details.job_name}_{rec.job_id}_0.out")
        manifest.save()
        return manifest


@contextlib.contextmanager
def _stdin(stream: Any) -> Iterator[None]:
    old = sys.stdin
    sys.stdin = stream
    try:
        yield
    finally:
        sys.stdin = old


def _job_id(handle: str) -> str:
    m = re.search(r"(\d+)$", handle)
    if not m:
        raise RuntimeError(f"nemo_run returned a job handle without a Slurm job id: {handle!r}")
    return m.group(1)


def sacct_states(ids: list[str]) -> dict[str, tuple[str, int | None]]:
    """Job states from sacct (squeue for jobs sacct does not know yet)."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,State,ExitCode", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    states: dict[str, tuple[str, int | None]] = {}
    for line in out.splitlines():
        jid, state, code = (line.split("|") + ["", ""])[:3]
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        states[jid] = (state, int(code.split(":")[0]) if code[:1].isdigit() else None)
    missing = [i for i in ids if i not in states]
    if missing:
        q = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(missing)], capture_output=True, text=True)
        for line in q.stdout.splitlines():
            jid, state = line.split("|")
            states[jid] = (state, None)
    return states


def _sacct_time(v: str) -> float | None:
    """sacct's local ISO time (2026-12-01T11:05:00) as epoch seconds; "Unknown"/"None" (not yet) as None."""
    try:
        return time.mktime(time.strptime(v.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def sacct_times(ids: list[str]) -> dict[str, tuple[float | None, float | None, float | None]]:
    """(submitted, started, ended) per job for the report's timeline; {} when sacct cannot say (never fatal:
    the states above are what status needs)."""
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,Submit,Start,End", "-j", ",".join(ids)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    times: dict[str, tuple[float | None, float | None, float | None]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 4:
            times[parts[0]] = (_sacct_time(parts[1]), _sacct_time(parts[2]), _sacct_time(parts[3]))
    return times
