"""The queue timeouts of one consumer's running jobs, on one loop timer.

Every job of a queue gets the same timeout, so the deadlines come in the order the jobs
start: an insertion-ordered dict holds them, and one timer, armed for the oldest, serves
them all. A job costs a dict insert and a delete, where a loop timer of its own costs a
timer handle, a heap push and, once cancelled, a heap pop: at thousands of jobs a second
that was a few percent of the worker's CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadlines:
    """``arm`` when a job's handler starts, ``disarm`` when it returns or raises; a task
    whose deadline passes first is handed to ``expire`` (once) and forgotten."""

    def __init__(self, timeout: float, expire: Callable[[asyncio.Task[None]], None]) -> None:
        self.timeout = timeout
        self._expire = expire
        self._due: dict[asyncio.Task[None], float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        deadline = loop.time() + self.timeout
        self._due[task] = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire, loop)

    def disarm(self, task: asyncio.Task[None]) -> None:
        self._due.pop(task, None)

    def __len__(self) -> int:
        return len(self._due)

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due = self._due
        while due:
            task, deadline = next(iter(due.items()))
            if deadline > now:
                # The oldest left started later than the one the timer was armed for.
                self._timer = loop.call_at(deadline, self._fire, loop)
                return
            del due[task]
            self._expire(task)
