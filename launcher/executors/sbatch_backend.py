"""Slurm through the plain sbatch scripts of ``launcher.sbatch``: what ``--emit-sbatch`` writes, submitted.

``emit_sbatch`` writes the files (``<stage>.sbatch``, ``submit_all.sh``, and in the run directory the stage
scripts and jobspec.json they reference) and submits nothing. ``SbatchBackend.submit`` emits into
``<run_dir>/sbatch/`` and runs that ``submit_all.sh``: the one code path a user who submits by hand takes too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from launcher.executors.slurm import SlurmJobs
from launcher.manifest import Manifest, atomic_write
from launcher.plan import LaunchPlan, plan_json_text
from launcher.sbatch import render_all


def write_stage_files(plan: LaunchPlan) -> list[Path]:
    """What the sbatch scripts reference: the stage scripts, jobspec.json and plan.json; the logs directory."""
    run_dir = Path(plan.run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    written = [run_dir / "plan.json", run_dir / "jobspec.json"]
    atomic_write(written[0], plan_json_text(plan) + "\n")
    atomic_write(written[1], plan.jobspec.to_json() + "\n")
    for s in plan.active_stages:
        atomic_write(Path(s.script_path), s.script, mode=0o755)
        Path(s.log_path).parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(s.script_path))
    return written


def emit_sbatch(plan: LaunchPlan, out_dir: str | Path) -> list[Path]:
    """--emit-sbatch DIR: every .sbatch file and submit_all.sh into DIR (+ the files they reference). No job."""
    out = Path(out_dir)
    written = write_stage_files(plan)
    for name, text in render_all(plan).items():
        path = out / name
        atomic_write(path, text, mode=0o755 if name.endswith(".sh") else 0o644)
        written.append(path)
    return written


def parse_submit_all(stdout: str) -> dict[str, str]:
    """``submit_all.sh`` prints ``<stage> <job id>`` per line."""
    ids: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            ids[parts[0]] = parts[1]
    return ids


class SbatchBackend(SlurmJobs):
    name = "sbatch"

    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        sbatch_dir = Path(plan.run_dir) / "sbatch"
        emit_sbatch(plan, sbatch_dir)
        proc = subprocess.run(["bash", str(sbatch_dir / "submit_all.sh")], capture_output=True, text=True)
        ids = parse_submit_all(proc.stdout)
        for name, jid in ids.items():
            if name in manifest.stages:
                manifest.stages[name].job_id = jid
                manifest.stages[name].state = "PENDING"
        manifest.save()
        if proc.returncode != 0:
            raise RuntimeError(f"submit_all.sh failed (exit {proc.returncode}): {proc.stderr.strip()}")
        missing = [n for n in manifest.stages if n not in ids]
        if missing:
            raise RuntimeError(f"submit_all.sh printed no job id for {', '.join(missing)}: {proc.stdout!r}")
        return manifest
