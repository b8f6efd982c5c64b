"""The small interface every backend implements."""

from __future__ import annotations

import abc

from launcher.manifest import Manifest
from launcher.plan import LaunchPlan

TERMINAL = {"COMPLETED", "SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE", "SKIPPED"}
OK_STATES = {"COMPLETED", "SUCCEEDED", "SKIPPED"}


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def submit(self, plan: LaunchPlan, manifest: Manifest) -> Manifest:
        """Submit (or run) every active stage in order; record job ids/states in the manifest and save it."""

    @abc.abstractmethod
    def refresh(self, manifest: Manifest) -> Manifest:
        """Update stage states from the scheduler."""

    @abc.abstractmethod
    def cancel(self, manifest: Manifest) -> list[str]:
        """Cancel every stage that has not finished; return what was cancelled."""

    def rollback(self, plan: LaunchPlan) -> list[str]:
        """After a submission failed part-way: withdraw what it had already queued (job ids), so that no stage
        of a half-submitted pipeline runs. Backends that queue nothing have nothing to withdraw."""
        return []
