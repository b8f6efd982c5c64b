"""What a dry run shows of a Slurm submission: the ``#SBATCH`` lines and the ``srun`` line of every stage.

For ``--backend sbatch`` (and ``--emit-sbatch``) that is our own scripts (``launcher.sbatch``). For the default
nemo-run backend it is what nemo_run's ``SlurmExecutor`` will write, rendered here from the same executor fields
(``slurm_executor_kwargs``) without importing nemo_run: a dry run must stay under half a second, and nemo_run's
import alone takes longer. ``tests/test_dryrun_preview.py`` holds these lines equal to the scripts real nemo_run
renders (the golden files of ``tests/test_slurm_golden.py``), so a nemo_run upgrade that changes them fails there.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Any

from launcher.executors.slurm import slurm_executor_kwargs, stage_task_command
from launcher.plan import LaunchPlan, Stage

# SlurmExecutor fields nemo_run writes as #SBATCH lines (a subset of its SBATCH_FLAGS: the ones we set)
_SBATCH_FIELDS = ("account", "partition", "time", "nodes", "ntasks_per_node", "cpus_per_task", "gres",
                  "exclusive", "mem", "qos", "constraint", "signal")
# nemo_run names the experiment directory <run>_<unix time> when it submits: unknown before. Rendered as a token
# shlex leaves unquoted (as the real name is), then shown as <EXP_ID>
EXP_ID = "<EXP_ID>"
_EXP_TOKEN = "@EXP_ID@"
RUNDIR = "/nemo_run"  # where nemo_run mounts a job's own directory in the container


def _flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def nemo_run_job_dir(plan: LaunchPlan, stage: Stage) -> str:
    """The directory nemo_run gives a stage's job (its sbatch file, logs and inline script)."""
    return posixpath.join(plan.run_dir, "nemorun", "experiments", plan.run, _EXP_TOKEN, stage.name)


def nemo_run_directives(plan: LaunchPlan, stage: Stage) -> list[str]:
    """The ``#SBATCH`` lines nemo_run writes for one stage (sorted by name, as it does)."""
    kw = slurm_executor_kwargs(plan, stage)
    name = kw["job_name_prefix"] + stage.name
    params: dict[str, Any] = {k: kw[k] for k in _SBATCH_FIELDS if kw.get(k) is not None}
    params.update(job_name=name, open_mode="append",
                  output=posixpath.join(nemo_run_job_dir(plan, stage), f"sbatch_{name}_%j.out"))
    params.update(kw.get("additional_parameters") or {})
    return [_flag(k, params[k]) for k in sorted(params)]


def nemo_run_srun(plan: LaunchPlan, stage: Stage) -> str:
    """The ``srun`` line nemo_run writes: Pyxis flags when the profile has a container."""
    kw = slurm_executor_kwargs(plan, stage)
    name = kw["job_name_prefix"] + stage.name
    job_dir = nemo_run_job_dir(plan, stage)
    here = RUNDIR if plan.container_image else job_dir
    out = posixpath.join(job_dir, f"log-{name}_%j_" + "${SLURM_RESTART_COUNT:-0}.out")
    if plan.container_image:
        where = ["--container-image", plan.container_image,
                 "--container-mounts", ",".join([*kw["container_mounts"], f"{job_dir}:{RUNDIR}"]),
                 "--container-workdir", f"{RUNDIR}/code"]
        if kw.get("container_env"):
            where += ["--container-env", ",".join(kw["container_env"])]
    else:
        where = ["--chdir", posixpath.join(job_dir, "code")]
    # nemo_run writes the stage's command into <job dir>/scripts/<stage>.sh and runs that
    script = posixpath.join(here, "scripts", f"{stage.name}.sh")
    quoted = " ".join(shlex.quote(a) for a in [*where, "--wait=60", "--kill-on-bad-exit=1", *kw["srun_args"]])
    return f"srun --output {out} {quoted} bash {script}"


def nemo_run_preview(plan: LaunchPlan, stage: Stage) -> str:
    """One stage's submission as nemo_run will make it: its #SBATCH lines, the dependency, the srun line."""
    after = [d for d in stage.depends_on if d in {s.name for s in plan.active_stages}]
    dep = [f"#SBATCH --dependency=afterok:{':'.join(f'<{d} job id>' for d in after)}  (on sbatch's command line)"]
    lines = [f"# nemo-run (SlurmExecutor) submits: sbatch {nemo_run_job_dir(plan, stage)}/sbatch_{plan.run}."
             f"{stage.name}.sh", *nemo_run_directives(plan, stage), *(dep if after else []),
             nemo_run_srun(plan, stage),
             f"#   where {RUNDIR}/scripts/{stage.name}.sh runs: {stage_task_command(stage)}"]
    return ("\n".join(lines) + "\n").replace(_EXP_TOKEN, EXP_ID)


def submission_preview(plan: LaunchPlan, backend: str) -> dict[str, str]:
    """Title -> text of what ``backend`` submits for every active stage (empty off Slurm)."""
    if plan.profile.executor != "slurm":
        return {}
    if backend == "sbatch":
        from launcher.sbatch import render_sbatch

        return {f"{s.name}.sbatch (sbatch)": render_sbatch(plan, s) for s in plan.active_stages}
    if backend == "submitit":
        return {f"{s.name} (submitit)": submitit_preview(plan, s) for s in plan.active_stages}
    return {f"{s.name} (nemo-run)": nemo_run_preview(plan, s) for s in plan.active_stages}


# AutoExecutor keyword -> submitit.slurm's _make_sbatch_string keyword
_SUBMITIT_NAMES = {"name": "job_name", "timeout_min": "time", "tasks_per_node": "ntasks_per_node"}


def submitit_preview(plan: LaunchPlan, stage: Stage) -> str:
    """The sbatch script submitit will submit for one stage, from submitit's own renderer (light: no torch)."""
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    from launcher.executors.submitit_backend import submitit_parameters

    after = [d for d in stage.depends_on if d in {s.name for s in plan.active_stages}]
    dep = ("afterok:" + ":".join(f"@{d}_job_id@" for d in after)) if after else ""  # shown as <..._job_id>
    if stage.resources.kind == "gpu":
        dep = f"{dep},singleton" if dep else "singleton"
    params = submitit_parameters(plan, stage, dep or None)
    kw = {_SUBMITIT_NAMES.get(k, k.removeprefix("slurm_")): v for k, v in params.items()}
    folder = posixpath.join(plan.run_dir, "submitit", stage.name)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
    text = str(_make_sbatch_string(command=command, folder=folder, **kw))
    return re.sub(r"@(\w+_job_id)@", r"<\1>", text)
