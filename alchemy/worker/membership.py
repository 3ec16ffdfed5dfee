"""Who is alive: this process's identity, its heartbeats, and recovery of the dead.

Each process has a stable identity (``host:name``) and, per queue it serves, a heartbeat key
with a TTL plus an entry in the queue's consumer registry. A process returns its own
leftovers at once when it starts; every process sweeps the registry on a timer and returns
the processing list of any member whose heartbeat has expired.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

import structlog

from alchemy.config import WorkerConfig
from alchemy.errors import IdentityInUseError
from alchemy.queue.job import Death, Decoded, ErrorInfo, decode_item
from alchemy.queue.store import QueueStore, RecoveredJob
from alchemy.worker.connections import is_transient
from alchemy.worker.handlers import HandlerModule, Unavailable
from alchemy.worker.observer import JobEvent, Observers, Transition

DEAD_HOOK_TIMEOUT = 10.0  # seconds a handler module's on_dead may take

log = structlog.get_logger("alchemy.membership")


def pid_alive(pid: int) -> bool:
    """True for a running process; a killed process not yet reaped (a zombie) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


class Membership:
    def __init__(
        self,
        stores: Sequence[QueueStore],
        config: WorkerConfig,
        observers: Observers | None = None,
        *,
        handlers: Mapping[str, HandlerModule | Unavailable] | None = None,
    ) -> None:
        self.stores = stores
        self.handlers = handlers or {}
        self.observers = observers or Observers()
        self.config = config
        self.identity = config.identity
        self.host = config.host or socket.gethostname()
        self.incarnation = uuid.uuid4().hex
        self.started_ms = int(time.time() * 1000)
        # Sweeping others waits until Redis has answered us for a whole heartbeat TTL, so a
        # Redis outage (which expires everyone's heartbeat) never looks like deaths.
        self._healthy_since = time.monotonic()

    def heartbeat_value(self) -> str:
        return json.dumps(
            {
                "identity": self.identity,
                "host": self.host,
                "pid": os.getpid(),
                "incarnation": self.incarnation,
                "started_ms": self.started_ms,
                "queues": [s.queue for s in self.stores],
            },
            separators=(",", ":"),
        )

    async def claim_identity(self) -> None:
        """Refuse to run beside a live process with the same identity."""
        for store in self.stores:
            value = await store.heartbeat_of(self.identity)
            if value is None:
                continue
            try:
                other = json.loads(value)
            except ValueError:
                continue
            if other.get("incarnation") == self.incarnation:
                continue
            pid = other.get("pid")
            if other.get("host") == self.host:
                if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
                    raise IdentityInUseError(
                        f"worker identity {self.identity} is in use by live pid {pid}; "
                        "give this process another worker.name"
                    )
            else:
                raise IdentityInUseError(
                    f"worker identity {self.identity} is in use by host {other.get('host')} "
                    f"(queue {store.queue}); give this process another worker.name"
                )

    async def recover_own(self) -> None:
        """Return what a previous run with this identity left in its processing lists."""
        for store in self.stores:
            jobs = await store.recover(
                self.identity, max_recoveries=self.config.max_recoveries, require_dead=False
            )
            if jobs:
                self._announce(store.queue, self.identity, jobs)
                await self._tell_handler(store.queue, jobs)
                recovered, poisoned = _counts(jobs)
                log.warning(
                    "recovered_own_jobs",
                    queue=store.queue,
                    recovered=recovered,
                    poisoned=poisoned,
                    worker=self.identity,
                )

    def _announce(self, queue: str, dead_worker: str, jobs: Sequence[RecoveredJob]) -> None:
        """One event per recovered job: ``recovered`` (back on the wait list) or ``dead``
        with reason ``poison``."""
        limit = self.config.max_recoveries
        for job in jobs:
            if job.poisoned:
                transition, reason = Transition.DEAD, "poison"
                message = (
                    f"the process running this job died {job.recoveries} times (limit {limit})"
                )
            else:
                transition, reason = Transition.RECOVERED, None
                message = f"the process running this job ({dead_worker}) died"
            self.observers.on_job(
                JobEvent(
                    queue,
                    transition,
                    job.job_id,
                    job.attempt,
                    self.identity,
                    error=ErrorInfo("ProcessDied", message),
                    reason=reason,
                    dead_worker=dead_worker,
                    recoveries=job.recoveries,
                )
            )

    async def _tell_handler(self, queue: str, jobs: Sequence[RecoveredJob]) -> None:
        """The queue's handler module hears of each job dead-lettered as poison."""
        handler = self.handlers.get(queue)
        if not isinstance(handler, HandlerModule) or handler.on_dead is None:
            return
        limit = self.config.max_recoveries
        for job in jobs:
            if not job.poisoned:
                continue
            decoded = decode_item(job.raw_job, queue=queue, max_bytes=len(job.raw_job) + 1)
            if not isinstance(decoded, Decoded):
                continue  # unreadable: no job to tell about
            message = f"the process running this job died {job.recoveries} times (limit {limit})"
            death = Death("poison", ErrorInfo("ProcessDied", message))
            dead_job = replace(
                decoded.job,
                id=job.job_id or decoded.job.id,
                attempt=job.attempt,
                recoveries=job.recoveries,
            )
            try:
                async with asyncio.timeout(DEAD_HOOK_TIMEOUT):
                    await handler.on_dead(dead_job, death)
            except Exception as exc:
                log.error(
                    "on_dead_failed",
                    queue=queue,
                    job_id=dead_job.id,
                    error=f"{type(exc).__name__}: {exc}",
                )

    async def beat(self) -> None:
        value = self.heartbeat_value()
        for store in self.stores:
            await store.heartbeat(value, self.config.heartbeat_ttl)

    async def heartbeat_loop(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:
                self._healthy_since = time.monotonic()
                log.warning("heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.config.heartbeat_interval)

    async def recovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.recovery_interval)
            if time.monotonic() - self._healthy_since < self.config.heartbeat_ttl:
                continue
            try:
                await self.sweep()
            except Exception as exc:
                self._healthy_since = time.monotonic()
                level = log.warning if is_transient(exc) else log.error
                level("recovery_sweep_failed", error=f"{type(exc).__name__}: {exc}")

    async def sweep(self) -> None:
        """Return the processing lists of every registered process whose heartbeat expired."""
        for store in self.stores:
            for member in await store.consumers():
                if member == self.identity or await store.heartbeat_of(member) is not None:
                    continue
                jobs = await store.recover(
                    member, max_recoveries=self.config.max_recoveries, require_dead=True
                )
                if jobs is not None:
                    self._announce(store.queue, member, jobs)
                    await self._tell_handler(store.queue, jobs)
                    recovered, poisoned = _counts(jobs)
                    log.warning(
                        "recovered_dead_worker",
                        queue=store.queue,
                        dead_worker=member,
                        recovered=recovered,
                        poisoned=poisoned,
                        worker=self.identity,
                    )


def _counts(jobs: Sequence[RecoveredJob]) -> tuple[int, int]:
    """(back on the wait list, dead-lettered as poison)"""
    poisoned = sum(job.poisoned for job in jobs)
    return len(jobs) - poisoned, poisoned
