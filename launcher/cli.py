"""The ``cpt-launch`` command line.

stdout carries results (the plan, scripts, job ids, JSON with --json); progress and logs go to stderr.
Exit codes: 0 ok, 2 usage/config error (nothing submitted), 3 submission failed, 4 a job failed (--wait).
Nothing heavy is imported here: nemo_run loads only inside a backend's submit, NeMo and torch never.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from launcher import __version__
from launcher.errors import EXIT_JOB_FAILED, EXIT_OK, EXIT_SUBMIT, EXIT_USAGE, ConfigError, Problem

CODE_DIR = str(Path(__file__).resolve().parent.parent)


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", "-c", required=True, help="profile name in clusters/ or a path to a YAML file")
    g = p.add_argument_group("run")
    g.add_argument("--nodes", type=int, help="nodes for the train stage (re-derives parallelism)")
    g.add_argument("--max-steps", type=int, help="training steps (default 150)")
    g.add_argument("--gbs", type=int, help="global batch size in sequences (default 1024)")
    g.add_argument("--mbs", type=int, help="micro batch size per GPU (default: the planner's choice)")
    g.add_argument("--seq-length", type=int, help="sequence length (default 8192)")
    g.add_argument("--data", action="append", default=[], metavar="[WEIGHT:]GLOB|PREFIX",
                   help="training data: JSONL files/globs (tokenized first) or prepared ..._text_document prefixes; "
                        "repeatable; relative paths are under the profile's data area. A leading number and ':' "
                        "is a weight (0.9:ja/*.jsonl.gz --data 0.1:en/replay_*.jsonl; write ./1:x for a path "
                        "starting with NUMBER:); unweighted inputs share the rest in proportion to their tokens")
    g.add_argument("--valid-data", action="append", default=[], metavar="[NAME=]GLOB|PREFIX",
                   help="validation data, repeatable; NAME=... (NAME: 1-32 of A-Za-z0-9_-) gives one validation "
                        "loss per named set (ja=... --valid-data en=...); val_loss is the first set's")
    g.add_argument("--model", help="model name (llama3.1-8b, llama3.2-1b, llama3.1-70b)")
    g.add_argument("--model-dir", help="an existing HF model directory (host path) instead of downloading")
    g.add_argument("--num-layers", type=int, help="train only this many layers (tests and benchmarks)")
    g.add_argument("--random-init", action="store_true",
                   help="benchmarks only: random weights instead of the base model (no download, no convert; the "
                        "tokenizer is read from --model-dir): the loss is not continual pretraining")
    g.add_argument("--container-image", help="container image (overrides the profile's)")
    g.add_argument("--run-name", help="name of the run directory (default cpt-<cluster>-<time>)")
    g.add_argument("--ckpt-every", type=int, dest="ckpt_every_n_steps",
                   help="checkpoint every N steps (default 15), plus one at the end of training; validation never "
                        "writes one")
    g.add_argument("--ckpt-keep", type=int, metavar="K",
                   help="finished checkpoints kept (default 2, or 1 where only one fits): K+1 must fit the "
                        "checkpoint directory's free space, which the pre-flight checks")
    g.add_argument("--ckpt-async", choices=("on", "off"), default="on",
                   help="write checkpoints in the background (default on); NeMo 2.7.3 finalizes a background save "
                        "only when a later save starts, so a kill loses up to two intervals: off makes each "
                        "checkpoint final when its step ends")
    g.add_argument("--val-every", type=int, dest="val_every_n_steps",
                   help="validate every N steps (default 15, and at the end of a shorter run)")
    g.add_argument("--attention", choices=("te", "sdpa", "auto"), help="attention kernel (default: the profile's)")
    g.add_argument("--wandb-project", metavar="NAME",
                   help="also log the train stage to this W&B project (WANDB_API_KEY is passed by name; offline "
                        "where the profile says hardware.internet: false)")
    g.add_argument("--evaluate", choices=("on", "off"), default="on",
                   help="the evaluate stage after export (default on): perplexity on the validation data and "
                        "Japanese replies, the CPT model beside the base model, on one GPU")
    g.add_argument("--lm-eval", metavar="TASKS", help="lm-evaluation-harness tasks for the evaluate stage, "
                   "comma-separated; their datasets must be in the HF cache (checked before submission)")
    k = p.add_argument_group("parallelism and memory (pin a knob; the planner chooses the rest)")
    k.add_argument("--tp", type=int, help="tensor parallel size")
    k.add_argument("--pp", type=int, help="pipeline parallel size")
    k.add_argument("--cp", type=int, help="context parallel size")
    k.add_argument("--recompute", choices=("none", "selective", "full"), help="activation recompute")
    k.add_argument("--optimizer-offload", choices=("auto", "on", "off"), default="auto",
                   help="optimizer state in host memory")
    k.add_argument("--peft", choices=("none", "lora"), default="none",
                   help="lora = a different experiment (adapters, not full-parameter CPT)")
    k.add_argument("--fp8", action="store_true", help="FP8 training (Transformer Engine)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    o.add_argument("--explain", action="store_true", help="show the planner's candidates and why it chose")


class _Parser(argparse.ArgumentParser):
    """No abbreviated options anywhere: `--node 4` taken as `--nodes 4` hides a typo that could be `--nodes 40`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser(tokenize_args: bool = False, evaluate_args: bool = False) -> argparse.ArgumentParser:
    ap = _Parser(
        prog="cpt-launch",
        description="Continual pretraining of Llama-3.1-8B on Japanese text with NeMo 2: plan, check and submit "
                    "the whole pipeline (download, convert, tokenize, train, export) to Slurm, Docker or one node.",
        epilog="examples:\n  cpt-launch --cluster dgx-h100 --nodes 4 --dry-run\n"
               "  cpt-launch --cluster dgx-h100 --nodes 4\n  cpt-launch status RUN\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"cpt-launch {__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    sp = sub.add_parser("submit", help="plan, check and submit the pipeline (the default command)")
    _plan_args(sp)
    sp.add_argument("--dry-run", action="store_true", help="print the plan and every script; touch nothing")
    sp.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 4 if a stage failed")
    sp.add_argument("--resume", action="store_true",
                    help="continue an existing run of this name from its latest checkpoint")
    sp.add_argument("--fresh", action="store_true",
                    help="start over: move the existing run directory (checkpoints included) aside to "
                         "<dir>.<timestamp> first; nothing is deleted")
    sp.add_argument("--backend", choices=("auto", "nemo-run", "sbatch", "submitit"), default="auto",
                    help="how to submit on Slurm: nemo-run (SlurmExecutor, the default), sbatch (the scripts "
                         "--emit-sbatch writes) or submitit (AutoExecutor)")
    sp.add_argument("--emit-sbatch", metavar="DIR",
                    help="write <stage>.sbatch and submit_all.sh into DIR (and the stage scripts into the run "
                         "directory) and submit nothing; then `bash DIR/submit_all.sh` or `sbatch DIR/<stage>.sbatch`")
    pp = sub.add_parser("plan", help="print the plan and every stage's script (a dry run)")
    _plan_args(pp)
    cp = sub.add_parser("check", help="run the pre-flight checks only")
    _plan_args(cp)
    for name, hlp in (("status", "show a run's stages and states"), ("cancel", "cancel a run's unfinished stages"),
                      ("logs", "print a stage's log"),
                      ("report", "write report.html and PNG plots into the run directory (the report extra)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("run", metavar="RUN", help="run name or run directory")
        s.add_argument("--cluster", "-c", help="the run's profile (to find its run directory by name)")
        if name == "status":
            s.add_argument("--json", action="store_true")
            s.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                           help="refresh every SECONDS (default 10) until every stage has ended; Ctrl-C stops")
        if name == "report":
            s.add_argument("--json", action="store_true", help="print what was written as JSON")
        if name == "logs":
            s.add_argument("--stage", help="stage (default: the latest one that started)")
            s.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
    tp = sub.add_parser("tokenize", help="JSONL -> Megatron .bin/.idx (the data stage)")
    if tokenize_args:  # its module imports numpy/tokenizers: only when that subcommand runs
        try:
            from launcher.data import cli as data_cli
        except ImportError as e:  # the [data] extra is not installed: say which, no traceback
            raise ConfigError([Problem("error", "tokenize", f"needs the data extra ({e}); fix: pip install -e "
                                                            "'.[data]' (numpy, tokenizers) in this environment")])
        data_cli.add_arguments(tp)
    ep = sub.add_parser("evaluate", help="perplexity, Japanese replies, harness tasks: CPT model beside base model")
    if evaluate_args:  # its options live with the stage (launcher/evaluate/cli.py; torch loads only when it runs)
        from launcher.evaluate import cli as eval_cli

        eval_cli.add_arguments(ep)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    bad = [(i, a) for i, a in enumerate(args_list) if any(ord(c) < 32 or ord(c) == 127 for c in a)]
    if bad:  # a newline or escape in a value has no place in a path, a name or an image, and could end up in a script
        for i, a in bad:
            print(f"cpt-launch: error: argument {i + 1} ({a!r}) holds a control character; allowed: printable "
                  "text only", file=sys.stderr)
        return EXIT_USAGE
    original = list(args_list)
    if args_list and args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version"):
        args_list.insert(0, "submit")  # `cpt-launch --cluster X` means submit
    try:
        ap = build_parser(tokenize_args=bool(args_list) and args_list[0] == "tokenize",
                          evaluate_args=bool(args_list) and args_list[0] == "evaluate")
    except ConfigError as e:
        for p in e.problems:
            print(f"cpt-launch: {p}", file=sys.stderr)
        return EXIT_USAGE
    if not args_list or args_list[0] in ("-h", "--help"):
        print(_full_help(ap), file=sys.stdout if args_list else sys.stderr)
        return EXIT_OK if args_list else EXIT_USAGE
    mistake = _unknown_words(ap, args_list)
    if mistake:
        print(f"cpt-launch: error: {mistake}", file=sys.stderr)
        return EXIT_USAGE
    args = ap.parse_args(args_list)
    try:
        if args.cmd == "tokenize":
            from launcher.data import cli as data_cli

            return int(data_cli.run(args))
        if args.cmd == "evaluate":
            from launcher.evaluate import cli as eval_cli

            return int(eval_cli.run(args))
        if args.cmd in ("status", "logs", "cancel", "report"):
            return _run_cmd(args)
        return _plan_cmd(args, original)
    except ConfigError as e:
        for p in e.problems:
            print(f"cpt-launch: {p}", file=sys.stderr)
        return EXIT_USAGE


def _subparsers(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in ap._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _full_help(ap: argparse.ArgumentParser) -> str:
    """``cpt-launch --help``: the commands, then the options of the default command (submit), which a user
    reaches without naming it."""
    sub = _subparsers(ap)["submit"]
    options = sub.format_help().split("\n\n", 1)[1]  # without submit's own usage lines
    return ap.format_help() + "\nsubmit, the default command (cpt-launch [submit] --cluster ...):\n\n" + options


def _unknown_words(ap: argparse.ArgumentParser, args: list[str]) -> str | None:
    """A mistyped command or option, with the nearest valid one; argparse itself would take a prefix of an option
    for the option (--node for --nodes), or report a missing --cluster for a mistyped --clster."""
    import difflib

    subs = _subparsers(ap)
    cmd = args[0]
    if cmd not in subs:
        near = difflib.get_close_matches(cmd, list(subs), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return f"unknown command '{cmd}'{hint} (commands: {', '.join(subs)}; options alone mean submit)"
    known = list(subs[cmd]._option_string_actions)
    for a in args[1:]:
        if a == "--":
            break
        name = a.split("=", 1)[0]
        if a.startswith("--") and len(name) > 2 and name not in known:
            near = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else f"; see cpt-launch {cmd} --help"
            return f"unknown option {name} for '{cmd}'{hint}"
    return None


# --------------------------------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> Any:
    from launcher.plan import Overrides

    resume: Literal["auto", "resume", "fresh"] = (
        "resume" if getattr(args, "resume", False) else "fresh" if getattr(args, "fresh", False) else "auto")
    return Overrides(
        nodes=args.nodes, max_steps=args.max_steps, gbs=args.gbs, mbs=args.mbs, seq_length=args.seq_length,
        data=tuple(args.data), valid_data=tuple(args.valid_data), model=args.model, model_dir=args.model_dir,
        container_image=args.container_image, run_name=args.run_name, num_layers=args.num_layers, tp=args.tp,
        pp=args.pp, cp=args.cp, recompute=args.recompute, optimizer_offload=args.optimizer_offload, peft=args.peft,
        fp8=args.fp8, attention=args.attention, ckpt_every_n_steps=args.ckpt_every_n_steps,
        ckpt_keep=args.ckpt_keep, ckpt_async=args.ckpt_async == "on", val_every_n_steps=args.val_every_n_steps,
        resume=resume,
        random_init=args.random_init, wandb_project=args.wandb_project,
        evaluate=args.evaluate == "on",
        lm_eval=tuple(t.strip() for t in (args.lm_eval or "").split(",") if t.strip()),
    )


def make_plan(args: argparse.Namespace, argv: list[str]) -> Any:
    from launcher.plan import PlanContext, build_plan
    from launcher.profiles import load_profile

    profile = load_profile(args.cluster)
    run_name = f"cpt-{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    free, finished = None, 0
    if args.cmd != "plan" and not getattr(args, "dry_run", False):  # a dry run may be far from the storage
        from launcher.checkpoints import disk_facts

        free, finished = disk_facts(os.path.join(profile.storage.runs.host, args.run_name or run_name, "checkpoints"))
    ctx = PlanContext(code_dir=CODE_DIR, command="cpt-launch " + shlex.join(argv), run_name=run_name,
                      ckpt_free_bytes=free, ckpt_finished=finished)
    plan = build_plan(profile, _overrides(args), ctx)
    # prepared prefixes' token counts (their .idx headers, read-only) make the default weights token-proportional
    # in the plan itself; prefixes not readable from here are resolved by the job at train start
    from launcher.preflight import prefix_tokens

    tokens = prefix_tokens(plan)
    if tokens:
        plan = build_plan(profile, _overrides(args), dataclasses.replace(ctx, prefix_tokens=tokens))
    return plan


def _plan_cmd(args: argparse.Namespace, argv: list[str]) -> int:
    if getattr(args, "resume", False) and getattr(args, "fresh", False):
        raise ConfigError([Problem("error", "--resume/--fresh", "give one of them, not both")])
    plan = make_plan(args, argv)
    problems = list(plan.problems) + _preflight(plan, args)
    dry = args.cmd in ("plan", "check") or getattr(args, "dry_run", False)
    # a dry run also looks at the files, read-only, but may run far from the cluster's storage: what it finds
    # there is shown (labelled) and would stop a submission, yet does not fail the dry run
    seen = _file_findings(plan) if dry and args.cmd != "check" else []
    errors = [p for p in problems if p.severity == "error"]
    if args.json and dry:
        _print_plan_json(plan, args, problems, seen)
    elif dry and args.cmd != "check":
        _print_plan_text(plan, args, seen)
    for p in problems:
        if not args.json:
            print(f"cpt-launch: {p}", file=sys.stderr)
    if args.cmd == "check" and not args.json:
        print(f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s)")
    if errors:
        return EXIT_USAGE
    emit = getattr(args, "emit_sbatch", None)
    if dry or emit is None:
        return EXIT_OK if dry else _submit(plan, args)
    return _emit(plan, emit)


def _file_findings(plan: Any) -> list[Problem]:
    """The pre-flight checks that read files (mounts, data, model, checkpoints), as this machine sees them."""
    from launcher import preflight

    every = preflight.check_plan(plan, env=dict(os.environ), filesystem=True)
    fileless = set(preflight.check_plan(plan, env=dict(os.environ), filesystem=False))
    return [p for p in every if p not in fileless]


def _submissions(plan: Any, args: argparse.Namespace) -> dict[str, str]:
    """Title -> text of what would be submitted: the sbatch scripts (#SBATCH, srun with the Pyxis flags)."""
    emit = getattr(args, "emit_sbatch", None)
    if emit:  # a dry run touches nothing: show what --emit-sbatch would write
        from launcher.sbatch import render_all

        return {os.path.join(emit, name): text for name, text in render_all(plan).items()}
    from launcher.preview import submission_preview

    return submission_preview(plan, getattr(args, "backend", "auto"))


def _print_plan_json(plan: Any, args: argparse.Namespace, problems: list[Problem], seen: list[Problem]) -> None:
    d = plan.to_json()
    d["problems"] = ([dict(p.to_json(), check="plan") for p in problems]
                     + [dict(p.to_json(), check="files (from this machine)") for p in seen])
    if args.cmd != "check":
        d["submission"] = _submissions(plan, args)
    print(json.dumps(d, indent=2))


def _print_plan_text(plan: Any, args: argparse.Namespace, seen: list[Problem]) -> None:
    from launcher.plan import plan_summary

    out = sys.stdout
    out.write(plan_summary(plan, explanation=not (args.explain and plan.explain_table)))
    if args.explain and plan.explain_table:
        out.write("\n" + plan.explain_table + "\n")
    for s in plan.stages:
        if not s.skip_reason:
            out.write(f"\n# ===== stage {s.name}: {s.script_path} =====\n{s.script}")
    emit = getattr(args, "emit_sbatch", None)
    for title, text in _submissions(plan, args).items():  # --emit-sbatch: titled by the file it would write
        out.write(f"\n# ===== {title if emit else 'submitted: ' + title} =====\n{text}")
    n_err = sum(p.severity == "error" for p in seen)
    out.write(f"\n# ===== pre-flight of the files, read-only, from this machine: {n_err} error(s) that would stop "
              f"a submission, {len(seen) - n_err} warning(s) (`cpt-launch check` exits 2 on them) =====\n")
    for p in seen:
        out.write(f"# {p}\n")


def _prepare_run_dir(plan: Any) -> None:
    """--resume/--fresh on an existing run: never while its jobs still run (two jobs, one checkpoint directory);
    --fresh then moves the whole run directory aside."""
    from launcher.executors import get_backend
    from launcher.executors.base import TERMINAL
    from launcher.manifest import find_run, move_aside

    run_dir = Path(plan.run_dir)
    if (run_dir / "manifest.json").is_file():
        old = find_run(str(run_dir), [])
        old = get_backend(old.backend).refresh(old)
        live = [f"{n} ({r.job_id}, {r.state})" for n, r in old.stages.items() if r.job_id and r.state not in TERMINAL]
        if live:
            raise ConfigError([Problem("error", f"--{plan.resume}",
                                       f"run {plan.run} still has live jobs: {', '.join(live)}; wait for them or "
                                       f"`cpt-launch cancel {run_dir}` first")])
    if plan.resume == "fresh":
        moved = move_aside(run_dir)
        if moved is not None:
            print(f"[cpt-launch] --fresh: moved {run_dir} aside to {moved} (nothing deleted)", file=sys.stderr)


def _emit(plan: Any, out_dir: str) -> int:
    """--emit-sbatch: write the scripts, submit nothing; stdout lists the files written."""
    from launcher.executors.sbatch_backend import emit_sbatch

    if plan.resume in ("resume", "fresh"):
        _prepare_run_dir(plan)
    elif (Path(plan.run_dir) / "manifest.json").is_file():  # never rewrite the scripts of a submitted run
        raise ConfigError([Problem("error", "--run-name",
                                   f"run-name={plan.run}: {plan.run_dir} already holds a submitted run; --resume "
                                   "to continue it, --fresh to move it aside and start over, or another --run-name")])
    for path in emit_sbatch(plan, out_dir):
        print(path)
    print(f"[cpt-launch] submit with: bash {os.path.join(out_dir, 'submit_all.sh')}", file=sys.stderr)
    return EXIT_OK


def _preflight(plan: Any, args: argparse.Namespace) -> list[Problem]:
    """Every pre-flight check. A dry run (plan, --dry-run) skips the ones that look at files: it may be run
    far from the cluster's file systems; `check` and a real submission run them all."""
    from launcher import preflight

    dry = args.cmd == "plan" or getattr(args, "dry_run", False)
    problems = list(preflight.check_plan(plan, env=dict(os.environ), filesystem=not dry))
    if not dry:
        problems += preflight.check_job_python(plan, dict(os.environ))
        problems += preflight.check_local_gpus(plan, dict(os.environ))
        from launcher.evaluate.preflight import check_lm_eval_datasets

        problems += check_lm_eval_datasets(plan, dict(os.environ))
        if not getattr(args, "emit_sbatch", None):  # --emit-sbatch may write the scripts far from the cluster
            problems += preflight.check_slurm_request(plan, dict(os.environ))
    return [p for p in problems if p.severity == "error"] + [p for p in problems if p.severity != "error"]


def backend_for(plan: Any, choice: str = "auto") -> str:
    """The backend name for ``--backend`` (auto/nemo-run: nemo_run's executor for the profile)."""
    ex = plan.profile.executor
    if choice in ("sbatch", "submitit"):
        if ex != "slurm":
            raise ConfigError([Problem("error", "--backend",
                                       f"backend={choice}: needs a Slurm profile; {plan.cluster} has executor={ex} "
                                       "(allowed here: auto, nemo-run)")])
        return choice
    return {"slurm": "nemo-run-slurm", "docker": "nemo-run-docker"}.get(ex, "nemo-run-local")


def _submit(plan: Any, args: argparse.Namespace) -> int:
    from launcher.executors import get_backend
    from launcher.manifest import write_run_dir

    backend = get_backend(backend_for(plan, getattr(args, "backend", "auto")))
    if plan.resume in ("resume", "fresh"):
        _prepare_run_dir(plan)
    manifest = write_run_dir(plan, backend.name, resume=plan.resume == "resume")
    print(f"[cpt-launch] run {plan.run}: {plan.run_dir} ({backend.name})", file=sys.stderr)
    try:
        manifest = backend.submit(plan, manifest)
    except (KeyboardInterrupt, Exception) as e:  # the scheduler or nemo_run said no, or Ctrl-C, part-way through
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        print(f"cpt-launch: submission failed: {why}", file=sys.stderr)
        # no stage of a half-submitted pipeline may run: withdraw what was already queued
        withdrawn = backend.rollback(plan)
        for r in manifest.stages.values():
            if r.state == "PENDING":
                r.state = "CANCELLED"
        manifest.save()
        print(f"[cpt-launch] withdrew the jobs already queued: {', '.join(withdrawn)}" if withdrawn else
              "[cpt-launch] nothing of this run was left queued", file=sys.stderr)
        print(f"[cpt-launch] the run directory stays for inspection: {plan.run_dir}", file=sys.stderr)
        return EXIT_SUBMIT
    print(f"run {plan.run}")
    for name, rec in manifest.stages.items():
        print(f"{name} {rec.job_id or '-'} {rec.state}")
    if any(r.state in ("FAILED", "CANCELLED") for r in manifest.stages.values()):
        return EXIT_JOB_FAILED
    if getattr(args, "wait", False):
        return _wait(manifest, backend)
    return EXIT_OK


def _wait(manifest: Any, backend: Any, poll: float = 2.0) -> int:
    from launcher.executors.base import OK_STATES, TERMINAL

    while True:
        manifest = backend.refresh(manifest)
        states = {n: r.state for n, r in manifest.stages.items()}
        if any(s in TERMINAL and s not in OK_STATES for s in states.values()):
            # afterok: the rest can never start; Slurm leaves them pending (DependencyNeverSatisfied)
            backend.cancel(manifest)
            print(f"[cpt-launch] run {manifest.run} failed: {states}", file=sys.stderr)
            return EXIT_JOB_FAILED
        if all(s in OK_STATES for s in states.values()):
            return EXIT_OK
        time.sleep(poll)


def _run_roots(cluster: str | None) -> list[str]:
    from launcher.profiles import available_profiles, load_profile

    names = [cluster] if cluster else available_profiles()
    roots = []
    for n in names:
        try:
            roots.append(load_profile(n).storage.runs.host)
        except ConfigError:
            if cluster:
                raise
    return roots


def _run_cmd(args: argparse.Namespace) -> int:
    from launcher.executors import get_backend
    from launcher.manifest import find_run

    manifest = find_run(args.run, _run_roots(args.cluster))
    backend = get_backend(manifest.backend)
    if args.cmd == "status":
        return _status(manifest, backend, args)
    if args.cmd == "report":
        from launcher.report import write_report

        try:
            import matplotlib  # noqa: F401  (drawn headless by launcher.report.plots, imported only here)
        except ImportError as e:
            raise ConfigError([Problem("error", "report", f"needs the report extra ({e}); fix: pip install -e "
                                                          "'.[report]' (matplotlib) in this environment")])
        written = write_report(backend.refresh(manifest).run_dir, manifest.to_json())
        print(json.dumps({k: str(v) for k, v in written.items()}, indent=2) if args.json else written["html"])
        return EXIT_OK
    if args.cmd == "cancel":
        done = backend.cancel(manifest)
        print("cancelled: " + (", ".join(done) if done else "nothing (all stages had finished)"))
        return EXIT_OK
    # logs
    manifest = backend.refresh(manifest)
    if args.stage:
        if args.stage not in manifest.stages:
            raise ConfigError([Problem("error", "--stage", f"stage={args.stage}: allowed: "
                                                            f"{', '.join(manifest.stages)}")])
        rec = manifest.stages[args.stage]
    else:
        started = [r for r in manifest.stages.values() if r.state not in ("PENDING", "CANCELLED")]
        rec = started[-1] if started else next(iter(manifest.stages.values()))
    return _print_log(rec, backend, manifest, args.follow)


def _status(manifest: Any, backend: Any, args: argparse.Namespace) -> int:
    """One status, or (--watch) a fresh one every few seconds until every stage has ended."""
    from launcher.executors.base import TERMINAL
    from launcher.manifest import find_run
    from launcher.progress import run_progress, status_text

    while True:
        manifest = backend.refresh(find_run(manifest.run_dir, []))  # re-read: a local launcher rewrites it
        d = manifest.to_json()
        progress = run_progress(manifest.run_dir, d) if "train" in manifest.stages else None
        if args.json:
            out = {**d, "train": progress.to_json() if progress else None}
            # --watch: one object per line, so that a reader can parse each refresh as it comes
            print(json.dumps(out) if args.watch else json.dumps(out, indent=2))
        else:
            if args.watch and sys.stdout.isatty():
                sys.stdout.write("\033[H\033[2J")  # clear the terminal: a live view, not a scrolling one
            sys.stdout.write(status_text(d, progress))
        sys.stdout.flush()
        if not args.watch or all(r.state in TERMINAL for r in manifest.stages.values()):
            return EXIT_OK
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK


def _print_log(rec: Any, backend: Any, manifest: Any, follow: bool) -> int:
    from launcher.executors.base import TERMINAL

    path = Path(rec.log)
    pos = 0
    while True:
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        elif not follow:
            print(f"cpt-launch: stage {rec.name} has no log yet ({path}); state {rec.state}", file=sys.stderr)
            return EXIT_OK
        if not follow:
            _print_other_tasks(path, manifest.stages[rec.name].state)
            return EXIT_OK
        manifest = backend.refresh(manifest)
        if manifest.stages[rec.name].state in TERMINAL and path.is_file() and path.stat().st_size == pos:
            _print_other_tasks(path, manifest.stages[rec.name].state)
            return EXIT_OK
        time.sleep(1.0)


def _print_other_tasks(path: Path, state: str, tail: int = 30) -> None:
    """A failed submitit job: the error may be on any task (srun kills the rest once one exits non-zero), so
    after task 0's log print the end of every other task's log (submitit names them ``<job>_<task>_log.out``)."""
    m = re.fullmatch(r"(\d+)_0_log\.out", path.name)
    if state == "COMPLETED" or m is None:
        return
    others = sorted(path.parent.glob(f"{m.group(1)}_*_log.out"), key=lambda p: int(p.name.split("_")[1]))
    for other in others:
        if other == path:
            continue
        lines = other.read_text("utf-8", "replace").splitlines()
        print(f"--- task {other.name.split('_')[1]} ({other}), last {min(tail, len(lines))} lines ---")
        print("\n".join(lines[-tail:]))


if __name__ == "__main__":
    sys.exit(main())
