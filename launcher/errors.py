"""Problems found in user input, reported all at once.

Every problem names where it was found (``file:line`` or a CLI flag), the field, the value and what is allowed,
so that a user can fix it before anything is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

EXIT_OK = 0
EXIT_USAGE = 2  # usage or configuration error: nothing was submitted
EXIT_SUBMIT = 3  # submission failed
EXIT_JOB_FAILED = 4  # a job failed (with --wait)


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a profile, an override or the environment."""

    severity: Severity
    where: str  # "clusters/dgx-h100.yaml:7", "--tp", "data prefix /x/y_text_document"
    message: str  # "gpus_per_node=9: a DGX H100 node has 8"

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "where": self.where, "message": self.message}


class ConfigError(Exception):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def errors_only(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
