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

import json
import os
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
        atomic_write(Path(self.run_dir) / "manifest.json", json.dumps(self.to_json(), indent=2) + "\n")


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_run_dir(plan: LaunchPlan, backend: str) -> Manifest:
    """Create the run directory with plan, job spec and scripts; refuse to reuse an existing run."""
    run_dir = Path(plan.run_dir)
    if (run_dir / "manifest.json").exists():
        raise ConfigError([Problem("error", "--run-name",
                                   f"run-name={plan.run}: {run_dir} already holds a submitted run; "
                                   "use `cpt-launch status` to see it, --resume to continue it, or another --run-name")])
    for sub in ("scripts", "logs", "checkpoints"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "plan.json", plan_json_text(plan) + "\n")
    atomic_write(run_dir / "jobspec.json", plan.jobspec.to_json() + "\n")
    for s in plan.active_stages:
        atomic_write(Path(s.script_path), s.script, mode=0o755)
    m = Manifest(run=plan.run, cluster=plan.cluster, backend=backend, run_dir=plan.run_dir, created=time.time(),
                 stages={s.name: StageRecord(name=s.name, log=s.log_path, script=s.script_path, outputs=s.outputs,
                                             depends_on=list(s.depends_on))
                         for s in plan.active_stages})
    m.save()
    return m


def find_run(run: str, runs_roots: list[str]) -> Manifest:
    """A run is named by its directory (absolute path) or by its name under one of the profiles' run roots."""
    cands = [Path(run)] if os.sep in run else [Path(r) / run for r in runs_roots]
    for c in cands:
        f = c / "manifest.json"
        if f.is_file():
            return Manifest.from_json(json.loads(f.read_text()))
    raise ConfigError([Problem("error", "RUN", f"run={run}: no manifest.json in {', '.join(str(c) for c in cands)} "
                                               "(give the run directory, or --cluster of the run)")])
