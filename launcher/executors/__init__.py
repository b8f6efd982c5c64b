"""Backends that submit a LaunchPlan. Imported lazily: nemo_run (and with it torch) loads only here."""

from __future__ import annotations

from launcher.executors.base import Backend


def get_backend(name: str) -> Backend:
    """nemo-run (Slurm via SlurmExecutor, local via LocalExecutor, Docker via DockerExecutor); on Slurm also
    sbatch (the scripts --emit-sbatch writes, submitted) and submitit (submitit.AutoExecutor)."""
    if name == "nemo-run-slurm":
        from launcher.executors.slurm import NemoRunSlurm

        return NemoRunSlurm()
    if name in ("nemo-run-local", "nemo-run-docker"):
        from launcher.executors.local import NemoRunLocal

        return NemoRunLocal(docker=name == "nemo-run-docker")
    if name == "sbatch":
        from launcher.executors.sbatch_backend import SbatchBackend

        return SbatchBackend()
    if name == "submitit":
        from launcher.executors.submitit_backend import SubmititBackend

        return SubmititBackend()
    raise ValueError(f"unknown backend {name!r}")
