"""The run directory: plan, job spec, scripts and a manifest, so status/logs/cancel work from any shell.

Layout (host paths)::

    <runs>/<run>/plan.json        the plan as --json prints it
    <runs>/<run>/jobspec.json     what the jobs read (container paths)
    <runs>/<run>/scripts/*.sh     each stage's script
    <runs>/<run>/logs/*.log       each stage's log (Slurm: one file per job, appended on requeue)
    <runs>/<run>/manifest.json    backend, job ids, states, log paths, artifacts

Files are written to a temporary name and renamed, so a reader never sees half a manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError, Problem
from launcher.plan import LaunchPlan, plan_json_text


@dataclass
class StageRecord:
    name: str
    job_id: str | None = None
    state: str = "PENDING"
    log: str = ""
    script: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""  # why a stage ended FAILED or CANCELLED, in one line (from its log where it says)
    # epoch seconds, where the backend knows them (the report's stage timeline); None: not recorded
    submitted: float | None = None
    started: float | None = None
    ended: float | None = None


# What a failed stage's log says, most specific first: the manifest's reason names it.
FAILURE_SIGNS: tuple[tuple[str, str], ...] = (
    ("No space left on device", "disk full (No space left on device)"),
    ("unexpected pos", "disk full while writing a checkpoint (torch: 'unexpected pos')"),
    ("CUDA out of memory", "GPU out of memory"),
    ("OutOfMemoryError", "GPU out of memory"),
    ("Killed", "killed (by the kernel's OOM killer or a signal)"),
)


def failure_reason(log_path: str | Path, tail_bytes: int = 256 * 1024) -> str:
    """One line for the manifest: the first known sign in the end of a stage's log, else its last error line."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    text = "\n".join(lines)
    for sign, why in FAILURE_SIGNS:
        if sign in text:
            return why
    for line in reversed(lines):
        if "Error" in line or "error:" in line or "Exception" in line:
            return line.strip()[:300]
    return ""


@dataclass
class Manifest:
    run: str
    cluster: str
    backend: str
    run_dir: str
    created: float
    stages: dict[str, StageRecord]
    attempt: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run, "cluster": self.cluster, "backend": self.backend, "run_dir": self.run_dir,
            "created": self.created, "attempt": self.attempt,
            "stages": {k: vars(v) for k, v in self.stages.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Manifest":
        return cls(run=d["run"], cluster=d["cluster"], backend=d["backend"], run_dir=d["run_dir"],
                   created=d["created"], attempt=d.get("attempt", 1),
                   stages={k: StageRecord(**v) for k, v in d["stages"].items()})

    def save(self) -> None:
        """Atomically; on a full disk (the run's own checkpoints can fill it) in place, so that a FAILED state is
        still recorded rather than the last RUNNING."""
        path = Path(self.run_dir) / "manifest.json"
        text = json.dumps(self.to_json(), indent=2) + "\n"
        try:
            atomic_write(path, text)
        except OSError as e:
            with open(path, "r+" if path.exists() else "w") as f:  # reuses the file's blocks
                f.write(text)
                f.truncate()
            print(f"[cpt-launch] {path}: written in place ({e.strerror})", file=sys.stderr)


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_run_dir(plan: LaunchPlan, backend: str, *, resume: bool = False) -> Manifest:
    """Create the run directory with plan, job spec and scripts; refuse to reuse an existing run.

    ``resume=True`` (``--resume``) reuses it: checkpoints and logs stay, plan/jobspec/scripts are rewritten, the
    previous manifest is kept as ``manifest.attempt<N>.json`` and the new one counts ``attempt = N + 1``.
    """
    run_dir = Path(plan.run_dir)
    attempt = 1
    old_manifest = run_dir / "manifest.json"
    if old_manifest.exists() and not resume:
        raise ConfigError([Problem("error", "--run-name",
                                   f"run-name={plan.run}: {run_dir} already holds a submitted run; "
                                   "use `cpt-launch status` to see it, --resume to continue it, --fresh to move it "
                                   "aside and start over, or another --run-name")])
    if old_manifest.exists():
        old = load_manifest(old_manifest)
        attempt = old.attempt + 1
        os.replace(old_manifest, run_dir / f"manifest.attempt{old.attempt}.json")
    for sub in ("scripts", "logs", "checkpoints"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "plan.json", plan_json_text(plan) + "\n")
    atomic_write(run_dir / "jobspec.json", plan.jobspec.to_json() + "\n")
    for s in plan.active_stages:
        atomic_write(Path(s.script_path), s.script, mode=0o755)
    m = Manifest(run=plan.run, cluster=plan.cluster, backend=backend, run_dir=plan.run_dir, created=time.time(),
                 attempt=attempt, stages={s.name: StageRecord(name=s.name, log=s.log_path, script=s.script_path, outputs=s.outputs,
                                             depends_on=list(s.depends_on))
                         for s in plan.active_stages})
    m.save()
    remember_run(m)
    return m


def checkpoint_entries(plan: LaunchPlan) -> list[str]:
    """What the run's own checkpoint directory (host path) holds; [] when it does not exist."""
    ckpt = Path(plan.run_dir) / "checkpoints"
    for s in plan.stages:
        if "checkpoints" in s.outputs:
            ckpt = Path(s.outputs["checkpoints"])
    try:
        return sorted(os.listdir(ckpt))
    except (FileNotFoundError, NotADirectoryError):
        return []


def move_aside(path: str | Path, now: float | None = None) -> Path | None:
    """``--fresh``: rename an existing directory to ``<path>.<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... if taken).

    Never deletes anything: the old checkpoints stay readable beside the new run. Returns the new path, or None
    when there was nothing to move.
    """
    src = Path(path)
    if not src.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    dst = src.with_name(f"{src.name}.{stamp}")
    n = 1
    while dst.exists():
        n += 1
        dst = src.with_name(f"{src.name}.{stamp}-{n}")
    os.rename(src, dst)  # same parent: atomic, and it fails rather than overwrite
    return dst


def load_manifest(path: Path) -> Manifest:
    """A run's manifest, or a ConfigError naming the file, the field and what it holds (a manifest edited by
    hand, truncated by a full disk or from another tool is reported, never a traceback)."""
    where = str(path)
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError([Problem("error", where, f"not a readable JSON manifest ({type(e).__name__}: {e})")])
    problems = _manifest_problems(d, where)
    if problems:
        raise ConfigError(problems)
    return Manifest.from_json(d)


_RUN_FIELDS: dict[str, Any] = {"run": str, "cluster": str, "backend": str, "run_dir": str, "created": (int, float),
                               "stages": dict}
_STAGE_FIELDS = {f.name: f for f in dataclasses.fields(StageRecord)}


def _manifest_problems(d: Any, where: str) -> list[Problem]:
    if not isinstance(d, dict):
        return [Problem("error", where, f"the manifest is a JSON {type(d).__name__}; allowed: an object with keys "
                                        f"{', '.join(_RUN_FIELDS)}")]
    out = [Problem("error", where, f"{k}: missing or not a {getattr(t, '__name__', 'number')} "
                                   f"({type(d.get(k)).__name__} found)")
           for k, t in _RUN_FIELDS.items() if not isinstance(d.get(k), t) or isinstance(d.get(k), bool)]
    extra = set(d) - set(_RUN_FIELDS) - {"attempt"}
    if extra:
        out.append(Problem("error", where, f"unknown keys {sorted(extra)}; allowed: {', '.join(_RUN_FIELDS)}, "
                                           "attempt"))
    if not isinstance(d.get("attempt", 1), int):
        out.append(Problem("error", where, f"attempt={d.get('attempt')!r}: must be a whole number"))
    for name, rec in (d.get("stages") or {}).items() if isinstance(d.get("stages"), dict) else ():
        if not isinstance(rec, dict):
            out.append(Problem("error", where, f"stages.{name}: a {type(rec).__name__}; allowed: an object"))
            continue
        bad = sorted(set(rec) - set(_STAGE_FIELDS))
        if bad or "name" not in rec:
            out.append(Problem("error", where, f"stages.{name}: unknown keys {bad} or no 'name'; allowed: "
                                               f"{', '.join(_STAGE_FIELDS)}"))
    return out


def state_dir() -> Path:
    """Where cpt-launch remembers the runs this user submitted: ``$CPT_STATE_DIR``, else
    ``$XDG_STATE_HOME/cpt-launch`` (``~/.local/state/cpt-launch``)."""
    if os.environ.get("CPT_STATE_DIR"):
        return Path(os.environ["CPT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cpt-launch"


def remember_run(m: Manifest) -> None:
    """Append the run to the user's index, so `status NAME` finds it whatever profile (a YAML path, a
    colleague's profile) it came from. Best effort: a read-only home must not stop a submission."""
    line = json.dumps({"run": m.run, "run_dir": m.run_dir, "cluster": m.cluster, "created": m.created})
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
        with open(state_dir() / "runs.jsonl", "a") as f:
            f.write(line + "\n")
    except OSError as e:
        print(f"[cpt-launch] could not record the run in {state_dir()}: {e.strerror}", file=sys.stderr)


def remembered_dirs(run: str) -> list[Path]:
    """The run directories recorded under this name, newest first."""
    try:
        lines = (state_dir() / "runs.jsonl").read_text("utf-8", "replace").splitlines()
    except OSError:
        return []
    out = []
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # one torn line must not hide the others
        if isinstance(rec, dict) and rec.get("run") == run and isinstance(rec.get("run_dir"), str):
            out.append(Path(rec["run_dir"]))
    return out


def find_run(run: str, runs_roots: list[str]) -> Manifest:
    """A run is named by its directory (a path), or by its name: the runs this user submitted (newest first),
    then the run roots of the profiles in clusters/."""
    if os.sep in run or run in (".", ".."):
        cands = [Path(run)]
    else:
        cands = list(dict.fromkeys([*remembered_dirs(run), *(Path(r) / run for r in runs_roots)]))
    for c in cands:
        f = c / "manifest.json"
        if f.is_file():
            return load_manifest(f)
    looked = ", ".join(str(c) for c in cands) or "(no run of this name was submitted from this account)"
    raise ConfigError([Problem("error", "RUN", f"run={run}: no manifest.json in {looked} (give the run directory, "
                                               "or --cluster of the run)")])
