"""Who is alive: this process's identity, its heartbeats, and recovery of the dead.

Each process has a stable identity (``host:name``) and, per queue it serves, a heartbeat key
with a TTL plus an entry in the queue's consumer registry. A process returns its own
leftovers at once when it starts; every process sweeps the registry on a timer and returns
the processing list of any member whose heartbeat has expired.

A heartbeat also expires when Redis itself stops answering for long enough, without anyone
dying: a server down (every client gets errors) or stalled (a long script, a fork, a
swapped-out server: every client waits, no error until ``socket_timeout``). So a process
judges others only while Redis has answered it promptly for a whole ``heartbeat_ttl``:
a heartbeat or sweep step that failed, or took longer than :attr:`Membership.slow_s`,
starts the wait again, and so does a heartbeat still waiting for its answer after that
long. A stall long enough to expire a live process's heartbeat (at least ``heartbeat_ttl -
heartbeat_interval``) always holds one of our heartbeats for more than ``slow_s`` (half of
``heartbeat_ttl - 2 * heartbeat_interval``): we beat every ``heartbeat_interval``.

After Redis refused or dropped us (a restart, a Sentinel or Cluster failover), the wait is
two TTLs: every process reconnects on its own schedule (its backoff, its turn on a loaded
machine), and one that is back a moment after us must get to beat before we judge it. A
process that dies while Redis is fine is still judged after one TTL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import structlog

from alchemy.config import WorkerConfig
from alchemy.errors import IdentityInUseError
from alchemy.queue.identity import Holder, IdentityClaims
from alchemy.queue.job import Death, Decoded, ErrorInfo, decode_item
from alchemy.queue.store import QueueStore, RecoveredJob
from alchemy.worker.connections import Episode
from alchemy.worker.handlers import HandlerModule, Unavailable
from alchemy.worker.observer import JobEvent, Observers, Transition

DEAD_HOOK_TIMEOUT: Final = 10.0  # seconds a handler module's on_dead may take
CLAIM_POLL_S: Final = 0.25  # seconds between tries while waiting out another's claim
CLAIM_MARGIN_S: Final = 0.5  # past its claim's TTL, a holder that did not renew is gone


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What tells this process apart from any other on the machine, even one with the
    same pid: its pid namespace, the boot, and when the pid started."""

    pid_namespace: str
    boot_id: str
    pid_started: int | None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode("ascii", "replace").strip()
    except OSError:
        return ""


def pid_started(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks after boot."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def this_process() -> ProcessFacts:
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return ProcessFacts(
        namespace, _read("/proc/sys/kernel/random/boot_id"), pid_started(os.getpid())
    )


def judge(holder: Holder) -> Literal["alive", "dead", "unknown"]:
    """Whether the process a claim names runs: known only on this machine, in our pid
    namespace, since the last boot."""
    facts = this_process()
    if not (holder.pid_namespace and holder.boot_id and holder.pid is not None):
        return "unknown"
    if holder.pid_namespace != facts.pid_namespace or holder.boot_id != facts.boot_id:
        return "unknown"
    if holder.pid == os.getpid() or not pid_alive(holder.pid):
        return "dead"
    if holder.pid_started is not None and pid_started(holder.pid) != holder.pid_started:
        return "dead"  # the pid was reused by another process
    return "alive"


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
        claims: IdentityClaims,
        handlers: Mapping[str, HandlerModule | Unavailable] | None = None,
        on_identity_lost: Callable[[], None] = lambda: None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        self.stores = stores
        # More about this process for its heartbeat (which providers serve it), read by
        # `alchemy status` and the admin API; never a secret.
        self.extras = dict(extras or {})
        self.claims = claims
        self.handlers = handlers or {}
        self.on_identity_lost = on_identity_lost
        self.identity_lost = False
        self.observers = observers or Observers()
        self.config = config
        self.identity = config.identity
        self.host = config.host or socket.gethostname()
        self.incarnation = uuid.uuid4().hex
        self.started_ms = int(time.time() * 1000)
        # Sweeping others waits until Redis has answered us promptly for a whole heartbeat
        # TTL, so a Redis outage or stall (which expires everyone's heartbeat) never looks
        # like deaths (module docstring).
        self._healthy_since = time.monotonic()
        self._wait_s = config.heartbeat_ttl  # how long answers must be prompt (docstring)
        self._beat_started: float | None = None  # while a heartbeat waits for Redis

    @property
    def slow_s(self) -> float:
        """A Redis answer slower than this counts as Redis not answering (seconds)."""
        return max(0.0, self.config.heartbeat_ttl - 2 * self.config.heartbeat_interval) / 2

    def _unhealthy(self, *, refused: bool = False) -> None:
        """Redis kept us waiting (or, ``refused``, failed us): start the wait again."""
        self._healthy_since = time.monotonic()
        if refused:
            self._wait_s = 2 * self.config.heartbeat_ttl

    def _may_judge_others(self) -> bool:
        """Redis has answered us promptly for a whole TTL, and is not keeping us waiting."""
        now = time.monotonic()
        if self._beat_started is not None and now - self._beat_started > self.slow_s:
            self._unhealthy()
        if now - self._healthy_since < self._wait_s:
            return False
        self._wait_s = self.config.heartbeat_ttl
        return True

    def heartbeat_value(self) -> str:
        return json.dumps(
            {
                "identity": self.identity,
                "host": self.host,
                "pid": os.getpid(),
                "incarnation": self.incarnation,
                "started_ms": self.started_ms,
                "queues": [s.queue for s in self.stores],
                **self.extras,
            },
            separators=(",", ":"),
        )

    def claim_value(self) -> str:
        """What our identity claim says about us: enough for another process to tell
        whether we still run (same machine and pid namespace: by our pid)."""
        facts = this_process()
        return json.dumps(
            {
                "identity": self.identity,
                "incarnation": self.incarnation,
                "host": self.host,
                "pid": os.getpid(),
                "pid_namespace": facts.pid_namespace,
                "boot_id": facts.boot_id,
                "pid_started": facts.pid_started,
                "started_ms": self.started_ms,
            },
            separators=(",", ":"),
        )

    @property
    def _claim_ttl_ms(self) -> int:
        return max(1, round(self.config.heartbeat_ttl * 1000))

    async def claim_identity(self) -> None:
        """Take our identity, atomically: never beside a live process that holds it.

        A holder on this machine and in our pid namespace is judged by its pid at once (a
        restart after a crash takes the identity back immediately). One we cannot see (another
        host, another pid namespace: containers) is given the time its claim has left: if it
        renews the claim meanwhile it is alive, and we refuse (:class:`IdentityInUseError`,
        exit status 78); if the claim lapses, we take it."""
        value = self.claim_value()
        replaceable = ""
        watching: str | None = None  # the incarnation whose claim we wait out
        deadline = 0.0
        while True:
            holder = await self.claims.claim(
                self.identity, value, self.incarnation, self._claim_ttl_ms, replaceable
            )
            if holder is None:
                return
            verdict = judge(holder)
            if verdict == "dead":
                log.warning(
                    "identity_taken_back",
                    worker=self.identity,
                    dead_pid=holder.pid,
                )
                replaceable = holder.incarnation
                continue
            if verdict == "alive":
                raise IdentityInUseError(
                    f"worker identity {self.identity} is in use by live pid {holder.pid}; "
                    "give this process another worker.name"
                )
            now = time.monotonic()
            if watching != holder.incarnation:
                watching = holder.incarnation
                deadline = now + holder.ttl_ms / 1000 + CLAIM_MARGIN_S
                log.warning(
                    "identity_claim_waiting",
                    worker=self.identity,
                    holder_host=holder.host,
                    holder_pid=holder.pid,
                    wait_s=round(holder.ttl_ms / 1000, 3),
                )
            elif now > deadline:
                where = (
                    f"host {holder.host}" if holder.host != self.host else "another pid namespace"
                )
                raise IdentityInUseError(
                    f"worker identity {self.identity} is in use by a live process in {where}"
                    f" (pid {holder.pid}, it keeps renewing its claim); give this process"
                    " another worker.name"
                )
            await asyncio.sleep(CLAIM_POLL_S)

    async def release_identity(self) -> None:
        await self.claims.release(self.identity, self.incarnation)

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
        """Renew our identity's claim, then each queue's heartbeat.

        On a Cluster the claim and each queue live in slots of their own, often on other
        nodes: one node failing over must not stop the heartbeats the others keep, or the
        processes that still reach them would take us for dead and run our jobs a second
        time. So a failed renewal of the claim still renews the heartbeats, and every queue
        is tried; the first error is raised after."""
        try:
            renewed = await self.claims.renew(
                self.identity, self.claim_value(), self.incarnation, self._claim_ttl_ms
            )
        except Exception:
            await self._beat_queues()
            raise
        if not renewed:
            self._identity_lost()
            return
        await self._beat_queues()

    async def _beat_queues(self) -> None:
        value = self.heartbeat_value()
        first_error: Exception | None = None
        for store in self.stores:
            try:
                await store.heartbeat(value, self.config.heartbeat_ttl)
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _identity_lost(self) -> None:
        if self.identity_lost:
            return
        self.identity_lost = True
        log.error(
            "identity_lost",
            worker=self.identity,
            reason="another process claimed this identity while ours had lapsed",
        )
        self.on_identity_lost()

    async def heartbeat_loop(self) -> None:
        episode = Episode("heartbeat")
        while True:
            self._beat_started = started = time.monotonic()
            try:
                await self.beat()
                episode.succeeded()
            except Exception as exc:
                self._unhealthy(refused=True)
                episode.failed(exc, step="heartbeat")
            else:
                if time.monotonic() - started > self.slow_s:
                    self._unhealthy()
            finally:
                self._beat_started = None
            await asyncio.sleep(self.config.heartbeat_interval)

    async def recovery_loop(self) -> None:
        episode = Episode("recovery")
        while True:
            await asyncio.sleep(self.config.recovery_interval)
            # Always look (the sweep judges nobody until the wait is over), so an episode of
            # failed sweeps ends, logged, as soon as Redis answers, not when judging resumes.
            try:
                await self.sweep()
                episode.succeeded()
            except Exception as exc:
                self._unhealthy(refused=True)
                episode.failed(exc, step="recovery")

    async def sweep(self) -> None:
        """Return the processing lists of every registered process whose heartbeat expired,
        judged only on prompt answers (module docstring): a look that took longer than
        :attr:`slow_s`, or made while one of our heartbeats waits that long, proves
        nothing and ends the sweep."""
        for store in self.stores:
            looked_at = time.monotonic()
            members = await store.consumers()
            for member in members:
                if member == self.identity:
                    continue
                expired = await store.heartbeat_of(member) is None
                if time.monotonic() - looked_at > self.slow_s:
                    self._unhealthy()
                if not self._may_judge_others():
                    return
                looked_at = time.monotonic()
                if not expired:
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
