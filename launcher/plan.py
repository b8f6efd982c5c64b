"""(ClusterProfile, recipe defaults, CLI overrides) -> LaunchPlan: a pure function.

Planning runs no subprocess, writes no file and reads no environment variable: everything it needs from the
outside world (the launcher's source directory, the command line, the run name) comes in as ``PlanContext``.
The frozen ``LaunchPlan`` renders every stage's script; executors (``launcher/executors``) are the only code
with side effects.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from launcher import __version__
from launcher.checkpoints import DEFAULT_KEEP, checkpoint_bytes, keep_that_fits
from launcher.errors import ConfigError, Problem
from launcher import mix
from launcher.jobspec import BlendPart, ConvertSpec, ExportSpec, JobSpec, Optim, Parallelism, TrainSpec, ValidSet
from launcher.models import MODELS, ModelSpec
from launcher.profiles import ClusterProfile

StageName = Literal["download", "convert", "tokenize", "train", "export", "evaluate"]
LauncherKind = Literal["none", "srun", "torchrun"]
STAGE_ORDER: tuple[StageName, ...] = ("download", "convert", "tokenize", "train", "export", "evaluate")
CODE_MOUNT = "/opt/cpt-launch"  # where the launcher's own source is mounted in the container
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WANDB_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # W&B refuses / \\ # ? % : in project names


@dataclass(frozen=True)
class Overrides:
    """What the user asked for on the command line; None = the profile's or recipe's default."""

    nodes: int | None = None
    max_steps: int | None = None
    gbs: int | None = None
    mbs: int | None = None
    seq_length: int | None = None
    data: tuple[str, ...] = ()  # as typed: [WEIGHT:]PATH (launcher.mix)
    valid_data: tuple[str, ...] = ()  # as typed: [NAME=]PATH
    model: str | None = None
    model_dir: str | None = None
    container_image: str | None = None
    run_name: str | None = None
    num_layers: int | None = None
    tp: int | None = None
    pp: int | None = None
    cp: int | None = None
    recompute: Literal["none", "selective", "full"] | None = None
    optimizer_offload: Literal["auto", "on", "off"] = "auto"
    peft: Literal["none", "lora"] = "none"
    fp8: bool = False
    attention: Literal["te", "sdpa", "auto"] | None = None
    ckpt_every_n_steps: int | None = None
    ckpt_keep: int | None = None  # finished checkpoints kept; None: 2, or fewer where only fewer fit the disk
    ckpt_async: bool = True
    val_every_n_steps: int | None = None
    resume: Literal["auto", "resume", "fresh"] = "auto"
    random_init: bool = False  # benchmarks: random weights, no download/convert; the tokenizer from model_dir
    wandb_project: str | None = None  # W&B project of the train stage (NeMo's WandbLogger); None: no W&B
    evaluate: bool = True  # the evaluate stage after export (--evaluate on|off)
    lm_eval: tuple[str, ...] = ()  # lm-evaluation-harness tasks the evaluate stage runs (--lm-eval)


@dataclass(frozen=True)
class PlanContext:
    """Facts from outside, gathered by the CLI before planning (so planning itself stays pure)."""

    code_dir: str  # host path of the launcher's source tree (mounted at CODE_MOUNT in containers)
    command: str  # the command line that made this plan (goes into script headers)
    run_name: str  # default run name when --run-name is not given (the CLI makes it from the clock)
    python: str = "python3"  # interpreter in the job environment
    # the checkpoint directory's filesystem as the CLI found it: free bytes (None: not looked at, e.g. a dry run
    # far from the cluster) and how many finished checkpoints of this run are already there (--resume)
    ckpt_free_bytes: int | None = None
    ckpt_finished: int = 0
    # tokens of prepared prefixes (host path without .bin/.idx -> tokens, from their .idx), where the caller read
    # them (``launcher.preflight.prefix_tokens``); a prefix not in it is resolved by pre-flight and the job
    prefix_tokens: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    """What a stage asks the scheduler for. CPU-only stages never hold GPU nodes."""

    kind: Literal["cpu", "gpu"]
    nodes: int
    ntasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time: str | None = None
    partition: str | None = None


@dataclass(frozen=True)
class Stage:
    name: StageName
    depends_on: tuple[str, ...]
    resources: Resources
    command: tuple[str, ...]  # argv inside the job environment (container paths)
    launcher: LauncherKind  # how many processes start the command
    script: str  # the bash script each task runs (rendered from the above)
    script_path: str  # host path the executor writes it to
    job_script_path: str  # the same file as the job sees it
    outputs: dict[str, str]  # artifact name -> host path
    log_path: str  # host path of the stage's log
    skip_reason: str | None = None  # set when the stage is planned but has nothing to do (e.g. data prepared)


@dataclass(frozen=True)
class LaunchPlan:
    run: str
    cluster: str
    profile: ClusterProfile
    model: ModelSpec
    nodes: int
    gpus: int
    parallelism: Parallelism
    jobspec: JobSpec
    stages: tuple[Stage, ...]
    run_dir: str  # host path
    job_run_dir: str  # as the job sees it
    env: dict[str, str]
    secrets: tuple[str, ...]
    mounts: tuple[tuple[str, str], ...]
    container_image: str | None
    problems: tuple[Problem, ...]
    memory: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    explain_table: str = ""
    command: str = ""
    choice: Any = None  # the planner's PlanChoice (memory estimate, candidates)
    resume: Literal["auto", "resume", "fresh"] = "auto"
    jsonl_inputs: tuple[tuple[str, str], ...] = ()  # (the item as given, JSONL glob as the job sees it)
    lm_eval_tasks: tuple[str, ...] = ()  # the evaluate stage's --lm-eval tasks (the pre-flight checks their data)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def active_stages(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.skip_reason is None)

    def to_json(self) -> dict[str, Any]:
        p = self.parallelism
        return {
            "version": __version__,
            "run": self.run,
            "cluster": self.cluster,
            "executor": self.profile.executor,
            "profile_source": self.profile.source,
            "model": self.model.name,
            "nodes": self.nodes,
            "gpus": self.gpus,
            "parallelism": {"tp": p.tp, "pp": p.pp, "cp": p.cp, "dp": p.dp, "mbs": p.mbs, "gbs": p.gbs,
                            "sequence_parallel": p.sequence_parallel, "grad_accum": p.grad_accum},
            "memory": self.memory,
            "hardware": {"gpu": self.profile.hardware.gpu, "peak_bf16_tflops": self.profile.hardware.peak_tflops,
                         "internet": self.profile.hardware.internet},
            "run_dir": self.run_dir,
            "container_image": self.container_image,
            "mounts": [f"{h}:{c}" for h, c in self.mounts],
            "env": self.env,
            "secrets_passed_by_name": list(self.secrets),
            "train": dataclasses.asdict(self.jobspec.train),
            "stages": [
                {"name": s.name, "depends_on": list(s.depends_on), "skipped": s.skip_reason,
                 "resources": dataclasses.asdict(s.resources), "launcher": s.launcher,
                 "command": list(s.command), "script_path": s.script_path, "log": s.log_path,
                 "outputs": s.outputs, "script": s.script}
                for s in self.stages
            ],
            "problems": [p.to_json() for p in self.problems],
        }


# --------------------------------------------------------------------------------------------------------------


def is_prefix(item: str) -> bool:
    """A prepared Megatron dataset prefix (``…_text_document``) rather than raw JSONL."""
    base = posixpath.basename(item)
    return base.endswith("_document") or item.endswith((".bin", ".idx"))


def _strip_bin_idx(item: str) -> str:
    return item[:-4] if item.endswith((".bin", ".idx")) else item


def _dataset_name(glob: str) -> str:
    """ja_wiki/train_*.jsonl.gz -> ja_wiki_train; a stable, readable name for the tokenized output."""
    parent = posixpath.basename(posixpath.dirname(glob.rstrip("/"))) or "data"
    stem = posixpath.basename(glob.rstrip("/"))
    stem = re.sub(r"\.jsonl(\.gz)?$", "", stem)
    stem = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_") or "all"
    return f"{parent}_{stem}" if parent != "data" else stem


def evaluate_items(profile: ClusterProfile, valid_items: list[mix.ValidItem]) -> list[tuple[str, str]]:
    """The evaluate stage's ``--data NAME=PATH`` items, as the job sees them: the validation sets' JSONL as given
    (each model tokenizes it with its own tokenizer) and prepared prefixes as prefixes. A set of several items
    gives NAME, NAME-2, ...: evaluate takes one path per name."""
    out = []
    for name, items in mix.group_valid(valid_items):
        for i, it in enumerate(items):
            host = it.path if it.path.startswith("/") else posixpath.join(profile.storage.data.host, it.path)
            host = _strip_bin_idx(host) if is_prefix(host) else host
            out.append((name if i == 0 else f"{name}-{i + 1}", _to_job_path(host, profile)))
    return out


def build_plan(profile: ClusterProfile, ov: Overrides, ctx: PlanContext) -> LaunchPlan:
    """The pure planning function. Raises ConfigError with every problem found."""
    problems: list[Problem] = []
    d = profile.defaults
    hw = profile.hardware

    nodes = ov.nodes if ov.nodes is not None else d.nodes
    if nodes < 1 or nodes > hw.max_nodes:
        problems.append(Problem("error", "--nodes", f"nodes={nodes}: {profile.name} allows 1..{hw.max_nodes} "
                                                    f"(hardware.max_nodes in {profile.source})"))
    model_name = ov.model or d.model
    if model_name not in MODELS:
        problems.append(Problem("error", "--model", f"model={model_name}: allowed: {', '.join(MODELS)}"))
    run = ov.run_name or ctx.run_name
    if not RUN_NAME_RE.fullmatch(run):
        problems.append(Problem("error", "--run-name", f"run-name={run}: allowed: letters, digits, '.', '_', '-' "
                                                        "(1-64, starting with a letter or digit)"))
    if ov.wandb_project is not None and not WANDB_PROJECT_RE.fullmatch(ov.wandb_project):
        problems.append(Problem("error", "--wandb-project",
                                f"wandb-project={ov.wandb_project}: allowed: letters, digits, '.', '_', '-' (1-128, "
                                "starting with a letter or digit)"))
    image = ov.container_image or (profile.container.image if profile.container else None)
    if ov.container_image and profile.container is None:
        problems.append(Problem("error", "--container-image",
                                f"container-image={ov.container_image}: {profile.name} runs without a container "
                                f"(executor={profile.executor}); use a profile with a container: section"))
    seq = ov.seq_length if ov.seq_length is not None else 8192
    gbs = ov.gbs if ov.gbs is not None else 1024
    max_steps = ov.max_steps if ov.max_steps is not None else 150
    counts = (("--seq-length", seq), ("--gbs", gbs), ("--max-steps", max_steps),
              ("--ckpt-every", ov.ckpt_every_n_steps), ("--ckpt-keep", ov.ckpt_keep),
              ("--val-every", ov.val_every_n_steps))
    for flag, val in counts:
        if val is not None and val < 1:
            problems.append(Problem("error", flag, f"{flag.lstrip('-')}={val}: must be >= 1"))
    problems += _bound_problems(ov, model_name)
    data_items, data_problems = mix.data_items(ov.data, d.data, profile.source)
    problems += data_problems
    valid_items, valid_problems = mix.valid_items(ov.valid_data, d.valid_data, profile.source)
    problems += valid_problems
    if not data_items and not data_problems:
        problems.append(Problem("error", "--data", f"no training data: give --data (JSONL globs or "
                                                   f"..._text_document prefixes) or defaults.data in {profile.source}"))
    if not valid_items and not valid_problems:
        problems.append(Problem("error", "--valid-data",
                                f"no validation data: give --valid-data (JSONL or a ..._text_document prefix) or "
                                f"defaults.valid_data in {profile.source}; NeMo's fallback, a 900,50,50 split of the "
                                "training blend, would silently hold out 10% of it"))
    attention = ov.attention or d.attention
    if ov.cp is not None and ov.cp > 1 and attention != "te":
        problems.append(Problem("error", "--cp", f"cp={ov.cp}: context parallelism needs Transformer Engine "
                                                 f"(attention=te), this run uses attention={attention}; allowed: 1, "
                                                 "or --attention te"))
    if problems:
        raise ConfigError(problems)

    model = MODELS[model_name]
    num_layers = ov.num_layers or model.num_layers
    if ov.num_layers is not None:
        model = dataclasses.replace(model, num_layers=ov.num_layers)
    gpus = nodes * hw.gpus_per_node

    from launcher import planner  # pure; imported here to keep `cpt-launch --help` minimal

    # Context parallelism needs Transformer Engine's attention: without it (sdpa, or auto that may resolve to
    # sdpa in the container) the planner must not choose it.
    cp_pin = ov.cp if ov.cp is not None else (None if attention == "te" else 1)
    pins = planner.Pins(tp=ov.tp, pp=ov.pp, cp=cp_pin, mbs=ov.mbs, recompute=ov.recompute,
                        optimizer_offload=ov.optimizer_offload, peft=ov.peft, fp8=ov.fp8)
    choice = planner.plan(hw, nodes, model, gbs, seq, pins)
    par = choice.parallelism
    offload = choice.optimizer_offload

    # ---- paths --------------------------------------------------------------------------------------------
    st = profile.storage
    run_dir = posixpath.join(st.runs.host, run)
    job_run_dir = posixpath.join(st.runs.job_path, run)
    in_container = profile.container is not None
    code = CODE_MOUNT if in_container else ctx.code_dir
    repo_tail = model.hf_repo.split("/")[-1]
    model_dir_host = ov.model_dir or posixpath.join(st.models.host, repo_tail)
    model_dir_job = _to_job_path(model_dir_host, profile)
    # the converted checkpoint is named after the HF directory it came from: two --model-dir of one model (say a
    # cut-down test model and the real one) must not share one converted checkpoint
    nemo_tail = posixpath.basename(ov.model_dir.rstrip("/")) if ov.model_dir else repo_tail
    if ov.num_layers is not None and ov.num_layers != MODELS[model_name].num_layers:
        nemo_tail += f"-{ov.num_layers}l"
    nemo_ckpt_host = posixpath.join(st.models.host, f"{nemo_tail}-nemo")
    nemo_ckpt_job = _to_job_path(nemo_ckpt_host, profile)

    data = plan_data(profile, data_items, valid_items, ctx.prefix_tokens)
    tokenize_jobs = data.tokenize_jobs

    ckpt_dir_host = posixpath.join(run_dir, "checkpoints")
    ckpt_size = checkpoint_bytes(model, ov.peft)
    if ov.ckpt_keep is not None:
        ckpt_keep = ov.ckpt_keep
    elif ctx.ckpt_free_bytes is not None:
        ckpt_keep = keep_that_fits(ckpt_size, ctx.ckpt_free_bytes, ctx.ckpt_finished)
    else:
        ckpt_keep = DEFAULT_KEEP
    export_host = posixpath.join(run_dir, "export", f"{repo_tail}-cpt")
    train = TrainSpec(
        model=model_name,
        num_layers=ov.num_layers,
        num_nodes=nodes,
        gpus_per_node=hw.gpus_per_node,
        parallelism=par,
        optim=Optim(),
        seq_length=seq,
        max_steps=max_steps,
        # the seed validates every 15 steps; a shorter run validates once, at its end (Lightning refuses more)
        val_check_interval=min(ov.val_every_n_steps or 15, max_steps),
        ckpt_every_n_steps=ov.ckpt_every_n_steps or 15,
        ckpt_keep=ckpt_keep,
        ckpt_async_save=ov.ckpt_async,
        fp8=ov.fp8,
        recompute=choice.recompute,
        # what the memory model assumed: full = uniform, one layer at a time (planner.recompute_settings)
        recompute_num_layers=choice.recompute_settings()["recompute_num_layers"],  # type: ignore[arg-type]
        optimizer_offload=offload,
        offload_fraction=1.0,
        # offloaded state: bf16 grads on the GPU (the fp32 main-grad buffer alone is 4 B/param)
        grad_reduce_in_fp32=not offload,
        peft=ov.peft,
        attention=attention,
        train_data=[],  # filled below from the blend where every weight is known
        blend=data.blend,
        valid_data=list(data.valid_sets[0].data),
        valid_sets=list(data.valid_sets),
        test_data=list(data.valid_sets[0].data),
        tokenizer_dir=model_dir_job,
        base_checkpoint="" if ov.random_init else nemo_ckpt_job,
        random_init=ov.random_init,
        checkpoint_dir=_to_job_path(ckpt_dir_host, profile),
        log_dir=_to_job_path(posixpath.join(run_dir, "train"), profile),
        # not under log_dir: NeMo's logger moves the files it finds there into run_N/ when a run resumes
        step_log=_to_job_path(posixpath.join(run_dir, "logs", "train_steps.jsonl"), profile),
        run_name=run,
        wandb_project=ov.wandb_project,
    )
    train = _resolved_if_known(train)
    jobspec = JobSpec(
        train=train,
        convert=ConvertSpec(model=model_name, num_layers=ov.num_layers, hf_model_dir=model_dir_job,
                            output_path=nemo_ckpt_job),
        export=ExportSpec(model=model_name, num_layers=ov.num_layers, checkpoint_dir=train.checkpoint_dir,
                          output_path=_to_job_path(export_host, profile), peft=ov.peft),
    )
    jobspec_job = posixpath.join(job_run_dir, "jobspec.json")

    env = {
        "PYTHONPATH": code,
        "PYTHONUNBUFFERED": "1",
        "CPT_RUN_DIR": job_run_dir,
        **({"HF_HOME": st.hf_cache.job_path} if st.hf_cache else {}),
        **d.env,
    }
    if attention == "sdpa":
        env["CPT_ATTENTION"] = "sdpa"

    py = ctx.python
    cpu = profile.hardware.cpus_per_node
    cpu_task = profile.slurm.cpus_per_cpu_task if profile.slurm else cpu
    cpu_part = (profile.slurm.cpu_partition or profile.slurm.partition) if profile.slurm else None
    cpu_time = profile.slurm.cpu_time if profile.slurm else None

    def cpu_res() -> Resources:
        return Resources("cpu", 1, 1, 0, cpu_task, cpu_time, cpu_part)

    tok_cmds: list[list[str]] = []
    for _where, glob, prefix in tokenize_jobs:
        tok_cmds.append([py, "-m", "launcher.cli", "tokenize", "--input", _to_job_path(glob, profile),
                         "--tokenizer", model_dir_job, "--output", _to_job_path(prefix, profile),
                         "--workers", str(cpu_task)])

    if profile.executor == "slurm":
        train_launcher: LauncherKind = "srun"
        train_cmd = [py, "-m", "recipes.entry", "train", "--jobspec", jobspec_job]
    elif hw.gpus_per_node > 1 or profile.executor == "torchrun":
        train_launcher = "torchrun"
        train_cmd = ["torchrun", "--standalone", "--nnodes=1", f"--nproc-per-node={hw.gpus_per_node}",
                     "-m", "recipes.entry", "train", "--jobspec", jobspec_job]
    else:
        train_launcher = "none"
        train_cmd = [py, "-m", "recipes.entry", "train", "--jobspec", jobspec_job]

    gpu_res = Resources("gpu", nodes, hw.gpus_per_node if profile.executor == "slurm" else 1, hw.gpus_per_node,
                        max(1, cpu // hw.gpus_per_node) if profile.executor == "slurm" else cpu,
                        profile.slurm.time if profile.slurm else None,
                        profile.slurm.partition if profile.slurm else None)

    specs: list[tuple[StageName, tuple[str, ...], Resources, list[list[str]], LauncherKind, dict[str, str],
                      str | None]] = [
        ("download", (), cpu_res(),
         [[py, "-m", "launcher.stages.download", "--repo", model.hf_repo, "--dest", model_dir_job]],
         "none", {"model_dir": model_dir_host},
         f"--random-init: no base weights to fetch (the tokenizer is read from {model_dir_host})"
         if ov.random_init else f"--model-dir: the HF model is already on disk ({model_dir_host})"
         if ov.model_dir else None),
        ("convert", ("download",), cpu_res(),
         [[py, "-m", "recipes.entry", "convert", "--jobspec", jobspec_job]],
         "none", {"nemo_checkpoint": nemo_ckpt_host},
         "--random-init: no base weights to convert" if ov.random_init else None),
        ("tokenize", ("download",), cpu_res(), tok_cmds, "none",
         {f"prefix_{i}": p + "_text_document" for i, (_, _, p) in enumerate(tokenize_jobs)},
         None if tokenize_jobs else "all --data items are prepared Megatron prefixes"),
        ("train", ("convert", "tokenize"), gpu_res, [train_cmd], train_launcher,
         {"checkpoints": ckpt_dir_host, "tensorboard": posixpath.join(run_dir, "train"),
          # NeMoLogger puts the WandbLogger's save_dir under log_dir; offline runs land in wandb/offline-run-*
          **({"wandb": posixpath.join(run_dir, "train", "wandb")} if ov.wandb_project else {})}, None),
        ("export", ("train",), cpu_res(),
         [[py, "-m", "recipes.entry", "export", "--jobspec", jobspec_job]],
         "none", {"hf_model": export_host}, None),
    ]
    specs.append(_evaluate_spec(profile, ov, py, cpu, export_host, model_dir_job, job_run_dir, run_dir,
                                evaluate_items(profile, valid_items)))
    skipped = {name for name, *_rest, skip in specs if skip}
    stages: list[Stage] = []
    for name, deps, res, cmds, launcher, outputs, skip in specs:
        deps = tuple(x for x in deps if x not in skipped)
        script_path = posixpath.join(run_dir, "scripts", f"{name}.sh")
        stage_env = dict(env)
        if name == "evaluate":  # no network at job time: the HF libraries read only the cache
            stage_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        if res.kind == "cpu":
            stage_env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            # read once, when CUDA initialises: set inside the trainer it came too late (7.04 GiB stayed reserved
            # but unallocated at an out-of-memory under the 47 GiB cap); a profile's env may set its own
            stage_env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
            if name == "train" and ov.wandb_project and (not hw.internet or profile.executor == "docker"):
                # no network from the nodes, or a container that secrets are never passed into (executors/local.py):
                # W&B writes its run under the train log dir; `wandb sync` it later
                stage_env["WANDB_MODE"] = "offline"
        script = render_stage_script(run=run, stage=name, cmds=cmds, env=stage_env, secrets=tuple(d.secrets),
                                     workdir=job_run_dir, command=ctx.command)
        stages.append(Stage(
            name=name, depends_on=deps, resources=res, command=tuple(cmds[0]) if cmds else (), launcher=launcher,
            script=script, script_path=script_path, job_script_path=_to_job_path(script_path, profile),
            outputs=outputs, log_path=posixpath.join(run_dir, "logs", f"{name}.log"), skip_reason=skip,
        ))

    return LaunchPlan(
        run=run, cluster=profile.name, profile=profile, model=model, nodes=nodes, gpus=gpus, parallelism=par,
        jobspec=jobspec, stages=tuple(stages), run_dir=run_dir, job_run_dir=job_run_dir, env=env,
        secrets=tuple(d.secrets), mounts=tuple(profile.mounts()) + ((ctx.code_dir, CODE_MOUNT),) if in_container
        else (), container_image=image, problems=(), memory=choice.memory_json(),
        explanation=choice.explanation, explain_table=getattr(planner, 'format_explain', lambda c: '')(choice), command=ctx.command,
        choice=choice, resume=ov.resume, lm_eval_tasks=ov.lm_eval if ov.evaluate else (),
        jsonl_inputs=tuple((w, _to_job_path(g, profile)) for w, g, _ in tokenize_jobs),
    )


# Upper bounds of the numbers a user gives: past them a value is a typo, and the planner's enumeration would take
# minutes over it (--num-layers 1000000000). Llama 3.1's context is 128K tokens.
LIMITS = {"--seq-length": 131072, "--gbs": 1 << 24, "--mbs": 1 << 16, "--max-steps": 10**8, "--ckpt-every": 10**8,
          "--ckpt-keep": 1000, "--val-every": 10**8, "--tp": 1024, "--pp": 1024, "--cp": 1024}


def _bound_problems(ov: Overrides, model_name: str) -> list[Problem]:
    out = []
    values = {"--seq-length": ov.seq_length, "--gbs": ov.gbs, "--mbs": ov.mbs, "--max-steps": ov.max_steps,
              "--ckpt-every": ov.ckpt_every_n_steps, "--ckpt-keep": ov.ckpt_keep, "--val-every": ov.val_every_n_steps,
              "--tp": ov.tp, "--pp": ov.pp, "--cp": ov.cp}
    for flag, val in values.items():
        if val is not None and val > LIMITS[flag]:
            out.append(Problem("error", flag, f"{flag.lstrip('-')}={val}: allowed: at most {LIMITS[flag]}"))
    for flag, val in (("--mbs", ov.mbs), ("--tp", ov.tp), ("--pp", ov.pp), ("--cp", ov.cp)):
        if val is not None and val < 1:
            out.append(Problem("error", flag, f"{flag.lstrip('-')}={val}: must be >= 1"))
    if ov.num_layers is not None and model_name in MODELS:
        full = MODELS[model_name].num_layers
        if not 1 <= ov.num_layers <= full:
            out.append(Problem("error", "--num-layers", f"num-layers={ov.num_layers}: {model_name} has {full} layers "
                                                        f"(allowed: 1..{full})"))
    return out


def _evaluate_spec(profile: ClusterProfile, ov: Overrides, py: str, cpu: int, export_host: str, model_dir_job: str,
                   job_run_dir: str, run_dir: str, items: list[tuple[str, str]]
                   ) -> tuple[StageName, tuple[str, ...], Resources, list[list[str]], LauncherKind, dict[str, str],
                              str | None]:
    """The evaluate stage: the exported model beside the base model it started from, on one GPU.

    --random-init has no base model (its --model-dir may hold only a tokenizer, and the run did not start from its
    weights): the stage measures the CPT model alone."""
    hw = profile.hardware
    sl = profile.slurm
    if profile.executor == "slurm":  # one GPU of one node: an evaluation must not hold a whole training node
        res = Resources("gpu", 1, 1, 1, max(1, cpu // hw.gpus_per_node), sl.time if sl else None,
                        sl.partition if sl else None)
    else:
        res = Resources("gpu", 1, 1, 1, cpu) if hw.gpus_per_node > 0 else Resources("cpu", 1, 1, 0, cpu)
    out = posixpath.join(run_dir, "eval", "evaluate.json")
    cmd = [py, "-m", "launcher.cli", "evaluate", "--model-dir", _to_job_path(export_host, profile)]
    if not ov.random_init:
        cmd += ["--base-model-dir", model_dir_job]
    for name, path in items:
        cmd += ["--data", f"{name}={path}"]
    if ov.lm_eval:
        cmd += ["--lm-eval", ",".join(ov.lm_eval)]
    cmd += ["--output", posixpath.join(job_run_dir, "eval", "evaluate.json")]
    return ("evaluate", ("export",), res, [cmd], "none", {"evaluation": out},
            None if ov.evaluate else "--evaluate off")


@dataclass(frozen=True)
class DataPlan:
    """Where the data comes from and goes: the training blend and validation sets (job paths), and the tokenize
    stage's inputs (where, host glob, host output prefix)."""

    blend: list[BlendPart]
    valid_sets: list[ValidSet]
    tokenize_jobs: list[tuple[str, str, str]]


def plan_data(profile: ClusterProfile, train_items: list[mix.DataItem], valid_items: list[mix.ValidItem],
              prefix_tokens: dict[str, int]) -> DataPlan:
    """Items -> prefixes. A JSONL item becomes the tokenize stage's output prefix (one job per distinct glob);
    ``prefix_tokens`` (host prefix -> tokens, gathered outside planning) fills in the tokens of prepared ones."""
    st = profile.storage
    jobs: dict[str, tuple[str, str, str]] = {}  # host prefix -> (where, host glob, host prefix)

    def host_prefix(where: str, item: str) -> tuple[str, bool]:
        host = item if item.startswith("/") else posixpath.join(st.data.host, item)
        if is_prefix(host):
            return _strip_bin_idx(host), False
        out = posixpath.join(st.data.host, "tokenized", _dataset_name(item))
        jobs.setdefault(out, (where, host, out))
        return out + "_text_document", True

    blend = []
    for it in train_items:
        host, tokenized = host_prefix(it.where, it.path)
        job = _to_job_path(host, profile)
        blend.append(BlendPart(prefix=job, weight=it.weight, source=it.where,
                               tokens=None if tokenized else prefix_tokens.get(host),
                               stats=job + ".stats.json" if tokenized else None))
    sets = [ValidSet(name, [_to_job_path(host_prefix(i.where, i.path)[0], profile) for i in items])
            for name, items in mix.group_valid(valid_items)]
    return DataPlan(blend=blend, valid_sets=sets or [ValidSet(mix.DEFAULT_VALID_NAME, [])],
                    tokenize_jobs=list(jobs.values()))


def _resolved_if_known(train: TrainSpec) -> TrainSpec:
    """The blend's shares, epochs and Megatron list where every token count it needs is known now; otherwise the
    job resolves them at train start (``launcher.mix.resolve_train_spec``)."""
    try:
        return mix.resolve_train_spec(train, read_tokens=lambda prefix: None)  # planning reads no file
    except mix.MixError:
        return train


def _to_job_path(host_path: str, profile: ClusterProfile) -> str:
    """Map a host path to the path the job sees through the container mounts (longest mount wins)."""
    best: tuple[str, str] | None = None
    for host, cont in profile.mounts():
        h = host.rstrip("/")
        if host_path == h or host_path.startswith(h + "/"):
            if best is None or len(h) > len(best[0]):
                best = (h, cont)
    if best is None:
        return host_path
    return best[1].rstrip("/") + host_path[len(best[0]):]


# Search paths a stage extends rather than replaces: NGC containers and source installs of NeMo/Megatron-LM set
# PYTHONPATH themselves, and a job that lost it would fail to import NeMo.
PREPENDED_PATHS = frozenset({"PYTHONPATH"})


def render_stage_script(*, run: str, stage: str, cmds: list[list[str]], env: dict[str, str],
                        secrets: tuple[str, ...], workdir: str, command: str) -> str:
    """The bash script a stage's task runs. Values are quoted; secrets are only named, never written."""
    lines = [
        "#!/bin/bash",
        f"# Generated by cpt-launch {__version__}: stage '{stage}' of run '{run}'.",
        # one line, whatever the arguments held: a newline would end the comment and run the rest
        f"# Made by: {' '.join(command.split())}",
        "# Submitted by the run's executor; to rerun this stage by hand: bash <this file>",
        "set -euo pipefail",
        "",
    ]
    for k in sorted(env):
        if k in PREPENDED_PATHS:  # ours first, and what the environment (container image, user) set stays
            lines.append(f"export {k}={shlex.quote(env[k])}\"${{{k}:+:${{{k}}}}}\"")
        else:
            lines.append(f"export {k}={shlex.quote(env[k])}")
    if secrets:
        lines.append("# Secrets are inherited from the submitting environment, by name only: " + " ".join(secrets))
    lines.append(f"cd {shlex.quote(workdir)}")
    lines.append("")
    for i, c in enumerate(cmds):
        prefix = "exec " if i == len(cmds) - 1 else ""
        lines.append(prefix + " ".join(shlex.quote(x) for x in c))
    return "\n".join(lines) + "\n"


def plan_summary(plan: LaunchPlan, explanation: bool = True) -> str:
    """The human-readable part of a dry run (``explanation=False`` when the --explain table follows with it)."""
    p = plan.parallelism
    out = [
        f"cpt-launch {__version__} plan: run {plan.run} on {plan.cluster} ({plan.profile.executor}), "
        f"{plan.nodes} node(s) x {plan.profile.hardware.gpus_per_node} GPU = {plan.gpus} GPU(s)",
        f"  model       {plan.model.name} ({plan.model.num_layers} layers), seq {plan.jobspec.train.seq_length}, "
        f"steps {plan.jobspec.train.max_steps}"
        + (", weights RANDOMLY INITIALISED (--random-init: a benchmark, not continual pretraining)"
           if plan.jobspec.train.random_init else ""),
        f"  parallelism TP{p.tp} PP{p.pp} CP{p.cp} DP{p.dp}, MBS {p.mbs}, GBS {p.gbs} "
        f"(grad accumulation {p.grad_accum}), sequence parallel {'on' if p.sequence_parallel else 'off'}",
        f"  optimizer   AdamW lr {plan.jobspec.train.optim.lr:g} -> {plan.jobspec.train.optim.min_lr:g} cosine, "
        f"warmup {plan.jobspec.train.optim.warmup_steps}, wd {plan.jobspec.train.optim.weight_decay:g}",
    ]
    if plan.memory:
        m = plan.memory
        out.append(f"  memory      predicted peak {m.get('predicted_peak_gib')} GiB of {m.get('capacity_gib')} GiB "
                   f"per GPU ({m.get('strategy')}; {'fits' if m.get('fits') else 'DOES NOT FIT'})")
    if plan.explanation and explanation:
        out += ["  " + line for line in plan.explanation.splitlines()]
    out += _mix_lines(plan)
    out.append(f"  run dir     {plan.run_dir}")
    if plan.container_image:
        out.append(f"  container   {plan.container_image}")
    out.append("  stages:")
    for s in plan.stages:
        r = s.resources
        if s.skip_reason:
            out.append(f"    - {s.name:9s} skipped: {s.skip_reason}")
            continue
        res = (f"{r.nodes} node(s) x {r.gpus_per_node} GPU, {r.ntasks_per_node} task(s)/node" if r.kind == "gpu"
               else f"CPU only, {r.cpus_per_task} CPU(s)")
        after = f" after {', '.join(s.depends_on)} (afterok)" if s.depends_on else ""
        out.append(f"    - {s.name:9s} {res}{after}")
    for pr in plan.problems:
        out.append(f"  {pr}")
    return "\n".join(out) + "\n"


def _mix_lines(plan: LaunchPlan) -> list[str]:
    """The training mix and the validation sets, as far as the plan knows them."""
    t = plan.jobspec.train
    out = []
    for i, p in enumerate(t.blend):
        share = f"{p.share:.1%}" if p.share is not None else (
            f"weight {p.weight:g}" if p.weight is not None else "by tokens")
        known = (f", {p.tokens:,} tokens" if p.tokens is not None else ", tokens after tokenize" if p.stats
                 else ", tokens at pre-flight")
        reps = f", {p.epochs:.2f} epochs" if p.epochs is not None else ""
        out.append(f"  {'data' if i == 0 else '':11s} {share} {p.prefix}{known}{reps}")
    for i, v in enumerate(t.valid_sets):
        out.append(f"  {'validation' if i == 0 else '':11s} {v.name}: {', '.join(v.data)}"
                   + (" (its loss is val_loss)" if i == 0 and len(t.valid_sets) > 1 else ""))
    return out


def plan_json_text(plan: LaunchPlan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=False)
