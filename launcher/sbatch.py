"""Plain sbatch scripts for a LaunchPlan: one ``<stage>.sbatch`` per stage plus ``submit_all.sh``.

Everything here is pure (the text is a function of the plan alone), so golden files pin it and a dry run can
print it. Writing the files and calling ``sbatch`` is ``launcher.executors.sbatch_backend``'s job.

The templates live in ``templates/`` beside the package (Jinja2). Why scripts and not only nemo_run: users on
login nodes want files they can read, keep and submit themselves, and jobs that survive time limits, preemption
and failed nodes -- the requeue logic is in ``templates/train.sbatch.j2`` and documented there.

The trainer's side of the contract (what ``launcher.stages.selftest train-loop`` does and the real train
entrypoint must do too):
  * on SIGUSR1, save a checkpoint and exit 0 (every rank; Slurm signals every process of the step). With NeMo:
    ``nemo.lightning.pytorch.callbacks.PreemptionCallback(sig=signal.SIGUSR1)``, and Lightning's own SLURM
    auto-requeue off (``SLURMEnvironment(auto_requeue=False)``): the batch script requeues, exactly once;
  * exit 2 on a configuration error (never requeued);
  * start from the run's own latest checkpoint, else the base weights (``launcher.resume.decide_resume``).
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from launcher import __version__
from launcher.errors import ConfigError, Problem
from launcher.plan import LaunchPlan, Stage

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

# What each srun task of the train step runs (``bash -c WRAPPER STAGE_SCRIPT MARKER``): its rank variables from
# its own Slurm environment (the per-task part of the rendezvous), then the stage script; exit status 2 (our
# entrypoints' configuration error) leaves MARKER, so the batch script can tell it from the SIGTERM that
# srun --kill-on-bad-exit sends the other tasks. ``trap : USR1``: Slurm signals every process of the step,
# the trainer handles SIGUSR1, this bash must only survive it.
TASK_WRAPPER = ('trap : USR1; export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID; '
                'rc=0; bash "$0" || rc=$?; if ((rc == 2)); then : >"$1"; fi; exit "$rc"')


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2  # a dependency; imported here so `cpt-launch --help` does not pay for it

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, never an empty string in a script
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # bash's ${#array[@]} would open a Jinja comment: the templates use no comments of Jinja's own
        comment_start_string="{%#",
        comment_end_string="#%}",
    )


def job_name(plan: LaunchPlan, stage: Stage) -> str:
    """``<run>.<stage>``, as the nemo_run backend names jobs; the train job's name makes it a singleton."""
    return f"{plan.run}.{stage.name}"


def _check_directive(stage: Stage, key: str, value: str) -> str:
    # #SBATCH lines are parsed by sbatch, not by a shell: a value cannot be quoted, so it must not need quoting.
    if not value or any(c.isspace() for c in value) or "#" in value:
        raise ConfigError([Problem("error", f"slurm.{key}",
                                   f"{key}={value!r} (stage {stage.name}): an #SBATCH value must be non-empty, "
                                   "without spaces or '#'")])
    return value


def whole_node(plan: LaunchPlan, stage: Stage) -> bool:
    """A GPU stage that uses every GPU of its nodes (train). The evaluate stage takes one GPU: the profile's
    exclusive/mem (whole-node settings, mem=0 is all of a node's memory) would hold a training node for it."""
    return stage.resources.gpus_per_node >= plan.profile.hardware.gpus_per_node


def stage_gres(plan: LaunchPlan, stage: Stage) -> str:
    """--gres of a GPU stage: the profile's (e.g. gpu:h100:8) for whole nodes, its count replaced otherwise."""
    sl = plan.profile.slurm
    n = stage.resources.gpus_per_node
    if sl is None or not sl.gres:
        return f"gpu:{n}"
    return sl.gres if whole_node(plan, stage) else re.sub(r"(:\d+)?$", f":{n}", sl.gres, count=1)


def sbatch_directives(plan: LaunchPlan, stage: Stage) -> list[str]:
    """The ``#SBATCH`` options of one stage (without the prefix)."""
    sl = plan.profile.slurm
    if sl is None:
        raise ConfigError([Problem("error", "--emit-sbatch",
                                   f"cluster={plan.cluster}: executor={plan.profile.executor} has no slurm: section; "
                                   "sbatch scripts need a Slurm profile (e.g. --cluster dgx-h100)")])
    r = stage.resources
    gpu = r.kind == "gpu"
    opts: list[tuple[str, str | None]] = [
        ("job-name", job_name(plan, stage)),
        ("account", sl.account),
        ("partition", r.partition),
        ("nodes", str(r.nodes)),
        ("ntasks-per-node", str(r.ntasks_per_node)),
        ("cpus-per-task", str(r.cpus_per_task)),
    ]
    whole = gpu and whole_node(plan, stage)
    if gpu:
        opts.append(("gres", stage_gres(plan, stage)))
    opts.append(("time", r.time or sl.time))
    if whole and sl.exclusive:
        opts.append(("exclusive", None))
    if whole and sl.mem:
        opts.append(("mem", sl.mem))
    if sl.qos:
        opts.append(("qos", sl.qos))
    if sl.constraint:
        opts.append(("constraint", sl.constraint))
    # --output is an absolute host path (Slurm writes it outside any container); append, so the log of a
    # requeued job keeps every attempt.
    opts += [("output", stage.log_path), ("open-mode", "append")]
    if whole:  # the trainer: checkpoint on SIGUSR1, requeue (a one-GPU evaluate job just runs again by hand)
        opts += [("requeue", None), ("signal", f"B:USR1@{sl.signal_seconds}"),
                 # at most one job of this name runs at a time: two jobs never write one checkpoint directory
                 ("dependency", "singleton")]
    else:
        opts.append(("no-requeue", None))
    for k, v in sorted(sl.additional_parameters.items()):
        opts.append((k, v))
    return [f"--{k}" if v is None else f"--{k}={_check_directive(stage, k, str(v))}" for k, v in opts]


def srun_args(plan: LaunchPlan, stage: Stage) -> list[str]:
    """``raw_srun_args``, shell-quoted for the templates."""
    return [shlex.quote(a) for a in raw_srun_args(plan, stage)]


def raw_srun_args(plan: LaunchPlan, stage: Stage) -> list[str]:
    """srun options: the profile's srun_args and, with a container, the Pyxis flags.

    Pyxis flags belong on srun, not #SBATCH: the batch script itself runs on the host, each task in the image.
    """
    sl = plan.profile.slurm
    args: list[str] = []
    if stage.resources.kind == "gpu":
        args.append("--kill-on-bad-exit=1")  # one failed rank ends the step instead of hanging the others
    args += list(sl.srun_args) if sl else []
    if plan.container_image:
        args += [
            f"--container-image={plan.container_image}",
            "--container-mounts=" + ",".join(f"{h}:{c}" for h, c in plan.mounts),
            f"--container-workdir={plan.job_run_dir}",
            "--no-container-mount-home",
        ]
        if plan.secrets:
            # names only: Pyxis copies their values from the job's environment (inherited from the submitter)
            args.append("--container-env=" + ",".join(plan.secrets))
    return args


def rendezvous_lines() -> list[str]:
    """The batch-level rendezvous (MASTER_ADDR/PORT, WORLD_SIZE from $SLURM_*), shared with submitit's setup."""
    text: str = _env().get_template("_rendezvous.sh.j2").render()
    return text.rstrip("\n").split("\n")


def config_error_marker(plan: LaunchPlan, stage: Stage, view: str) -> str:
    """Where a task records exit status 2 (``view``: "host" for the batch script, "job" for the task)."""
    base = plan.run_dir if view == "host" else plan.job_run_dir
    return f"{base}/logs/.{stage.name}.config-error"


def task_command(plan: LaunchPlan, stage: Stage) -> list[str]:
    """argv each srun task runs (the same as templates/train.sbatch.j2's srun line)."""
    return ["bash", "-c", TASK_WRAPPER, stage.job_script_path, config_error_marker(plan, stage, "job")]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _how_to_submit(stage: Stage) -> str:
    after = f" after {', '.join(stage.depends_on)} succeeded" if stage.depends_on else ""
    return f"sbatch {stage.name}.sbatch{after}; or `bash submit_all.sh` for every stage in order"


def render_sbatch(plan: LaunchPlan, stage: Stage) -> str:
    """The sbatch script of one stage: train.sbatch.j2 for the GPU step on whole nodes, stage.sbatch.j2 for one
    task (the CPU stages, and evaluate on one GPU)."""
    sl = plan.profile.slurm
    gpu = stage.resources.kind == "gpu" and whole_node(plan, stage)
    ctx: dict[str, Any] = dict(
        version=__version__,
        what=f"stage '{stage.name}'",
        run=plan.run,
        command=_one_line(plan.command) or "(not recorded)",
        how_to_submit=_how_to_submit(stage),
        directives=sbatch_directives(plan, stage),
        srun_args=srun_args(plan, stage),
        stage=stage.name,
        stage_script=stage.job_script_path,
        stage_script_q=shlex.quote(stage.job_script_path),
        task_wrapper_q=shlex.quote(TASK_WRAPPER),
        marker_host_q=shlex.quote(config_error_marker(plan, stage, "host")),
        marker_job_q=shlex.quote(config_error_marker(plan, stage, "job")),
        max_requeues=sl.max_requeues if sl else 0,
        profile_source=Path(plan.profile.source).name or plan.cluster,
        gpus=stage.resources.gpus_per_node if stage.resources.kind == "gpu" else 0,
    )
    return str(_env().get_template("train.sbatch.j2" if gpu else "stage.sbatch.j2").render(**ctx))


def render_submit_all(plan: LaunchPlan) -> str:
    """``submit_all.sh``: sbatch --parsable each active stage in order, afterok on its dependencies."""
    active = {s.name for s in plan.active_stages}
    rows = []
    for s in plan.active_stages:
        deps = [d for d in s.depends_on if d in active]
        dep = ("afterok:" + ":".join("${%s_id}" % d for d in deps)) if deps else ""
        if s.resources.kind == "gpu" and whole_node(plan, s):
            # on the command line --dependency replaces the script's #SBATCH one: keep singleton
            dep = f"{dep},singleton" if dep else "singleton"
        rows.append({"name": s.name, "var": f"{s.name}_id", "dependency": dep})
    train = next((s for s in plan.active_stages if s.resources.kind == "gpu"), None)
    ctx = dict(
        version=__version__,
        what="every stage",
        run=plan.run,
        command=_one_line(plan.command) or "(not recorded)",
        how_to_submit="bash submit_all.sh (from any directory; the .sbatch files are beside it)",
        stages=rows,
        train_job_name=job_name(plan, train) if train else f"{plan.run}.train",
    )
    return str(_env().get_template("submit_all.sh.j2").render(**ctx))


def render_all(plan: LaunchPlan) -> dict[str, str]:
    """File name -> text for every file --emit-sbatch writes into its directory."""
    out = {f"{s.name}.sbatch": render_sbatch(plan, s) for s in plan.active_stages}
    out["submit_all.sh"] = render_submit_all(plan)
    return out
