"""What is failing in this process right now: background steps in a failure episode
(Redis refusing an ack, a reconcile that cannot read), dependencies held down, background
tasks that ended. ``/readyz`` and ``systemctl status`` report it; nothing here decides
anything."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Problem:
    what: str  # "ack:content-generation", "dependency:postgres", "task:reconcile:research"
    reason: str
    since: float  # time.monotonic()

    def describe(self, now: float | None = None) -> str:
        age = (time.monotonic() if now is None else now) - self.since
        return f"{self.what}: {self.reason} (for {age:.1f}s)"


class Health:
    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}

    def fail(self, what: str, reason: str) -> None:
        """``what`` is failing; the first failure of an episode keeps its start time."""
        known = self._problems.get(what)
        self._problems[what] = Problem(what, reason, known.since if known else time.monotonic())

    def clear(self, what: str) -> None:
        self._problems.pop(what, None)

    def problems(self) -> list[Problem]:
        return sorted(self._problems.values(), key=lambda p: p.what)

    def describe(self) -> list[str]:
        now = time.monotonic()
        return [problem.describe(now) for problem in self.problems()]


process_health: Final = Health()
"""The process's one registry (the steps that report into it have no handle on a worker)."""
