"""systemd integration: the sd_notify protocol and the worker extension that speaks it.

A service with ``Type=notify`` gets the address of a datagram socket in ``NOTIFY_SOCKET`` (a
path, or ``@name`` in the abstract namespace) and, with ``WatchdogSec=``, the watchdog
period in ``WATCHDOG_USEC`` (for the process in ``WATCHDOG_PID``, when set). A message is one
datagram of ``KEY=VALUE`` lines (sd_notify(3)). Without ``NOTIFY_SOCKET`` nothing here
sends anything, so the same process runs unchanged outside systemd.

:class:`SystemdNotifier` tells systemd:

- ``READY=1`` once the consumers run, Redis answers a PING and PostgreSQL a ``SELECT 1``;
  until then ``STATUS=waiting for ...`` says what is missing, retried with a backoff;
- ``STATUS=`` a one-line summary, jobs in flight per queue, sent whenever it changes;
- ``WATCHDOG=1`` every half watchdog period from the event loop itself, so a loop blocked by
  a handler stops the pings and systemd restarts the service;
- ``STOPPING=1`` when a stop begins, before running jobs drain (the pings go on until the
  drain has ended).

The command line reads the environment once (:meth:`NotifySettings.from_environ`) and passes
the settings down; nothing else here looks at ``os.environ``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from alchemy.config import WorkerConfig
from alchemy.errors import ConfigError
from alchemy.logs import redact
from alchemy.worker.supervisor import Running

log = structlog.get_logger("alchemy.systemd")

CHECK_TIMEOUT: Final = 3.0  # seconds for one Redis PING or PostgreSQL connect + SELECT 1
RETRY_FIRST: Final = 0.5  # seconds before checking the dependencies again, doubling ...
RETRY_MAX: Final = 5.0  # ... up to this
STATUS_INTERVAL: Final = 1.0  # seconds between looks at the summary (sent only on change)
MAX_STATUS: Final = 200  # characters of a STATUS line


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """What systemd passed in the environment; empty outside systemd."""

    socket: str = ""  # NOTIFY_SOCKET
    watchdog_usec: int = 0  # WATCHDOG_USEC when it is meant for this process, else 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> NotifySettings:
        address = environ.get("NOTIFY_SOCKET", "")
        if address and not address.startswith(("/", "@")):
            log.warning("systemd_notify_unsupported", notify_socket=address)
            address = ""
        return cls(socket=address, watchdog_usec=_watchdog_usec(environ, pid) if address else 0)

    @property
    def enabled(self) -> bool:
        return bool(self.socket)

    @property
    def watchdog_interval(self) -> float:
        """Seconds between ``WATCHDOG=1`` pings (half the period); 0 without a watchdog."""
        return self.watchdog_usec / 2_000_000


def check_watchdog(environ: Mapping[str, str], pid: int, worker: WorkerConfig) -> None:
    """Refuse (:class:`ConfigError` naming ``worker.heartbeat_ttl``) a watchdog too slow
    for the heartbeat: a process whose event loop is blocked must be killed by the watchdog
    before its heartbeat expires and other processes recover its jobs.

    The loop blocks at moment 0. Its last heartbeat went out up to one
    ``heartbeat_interval`` earlier, so it can expire as soon as ``heartbeat_ttl -
    heartbeat_interval``; its last ``WATCHDOG=1`` may have gone out just before 0, so the
    watchdog fires by ``WatchdogSec`` at the latest. Hence ``WatchdogSec < heartbeat_ttl -
    heartbeat_interval`` (the shipped units: 2 s < 3 s - 0.5 s)."""
    usec = _watchdog_usec(environ, pid)
    if not usec:
        return
    period = usec / 1_000_000
    margin = worker.heartbeat_ttl - worker.heartbeat_interval
    if period >= margin:
        raise ConfigError(
            "worker.heartbeat_ttl",
            f"must be more than the systemd watchdog period (WatchdogSec={period:g}s) plus"
            f" worker.heartbeat_interval ({worker.heartbeat_interval:g}s), got"
            f" {worker.heartbeat_ttl:g}: a process whose event loop is blocked must be killed"
            " by the watchdog before its jobs are recovered elsewhere (lower WatchdogSec, or"
            " raise heartbeat_ttl; docs/operations.md, The watchdog)",
        )


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int:
    """Like sd_watchdog_enabled(3): the period, when it is set and meant for ``pid``."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        owner = int(environ.get("WATCHDOG_PID") or pid)
    except ValueError:
        return 0
    return usec if usec > 0 and owner == pid else 0


def socket_address(notify_socket: str) -> bytes:
    """``NOTIFY_SOCKET`` as a Unix socket address: a leading ``@`` is the abstract namespace."""
    if notify_socket.startswith("@"):
        return b"\0" + os.fsencode(notify_socket[1:])
    return os.fsencode(notify_socket)


class Notify:
    """The datagram socket to systemd. A send never blocks and never raises: a message that
    cannot go is logged (once until sending works again) and dropped."""

    def __init__(self, notify_socket: str) -> None:
        self.address = socket_address(notify_socket)
        self._sock: socket.socket | None = None
        self._failing = False

    def send(self, *fields: str) -> bool:
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "systemd_notify_failed", message=fields[0], error=f"{type(exc).__name__}: {exc}"
                )
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_field(text: str) -> str:
    """A ``STATUS=`` field: one line, short, without secrets."""
    line = " ".join(redact(text).split())
    return "STATUS=" + (line if len(line) <= MAX_STATUS else line[: MAX_STATUS - 1] + "…")


def in_flight_summary(running: Running) -> str:
    """``research 1/2, content-generation 0/3``: jobs running of the concurrency, per queue."""
    return ", ".join(f"{c.name} {c.in_flight}/{c.config.concurrency}" for c in running.consumers)


async def ping_postgres(url: str) -> None:
    """Connect, ``SELECT 1``, close, within ``CHECK_TIMEOUT``; raises what went wrong."""
    import asyncpg

    async with asyncio.timeout(CHECK_TIMEOUT):
        conn = await asyncpg.connect(url, timeout=CHECK_TIMEOUT)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=CHECK_TIMEOUT)


async def dependency_problem(running: Running) -> str | None:
    """Why the service is not ready yet (``"postgres: ..."``), or None when Redis and
    PostgreSQL both answer.

    PostgreSQL is always checked: every shipped database-backed handler needs it and
    ``database.url`` always has a value, so a process without it is not ready to serve
    them even though its asyncpg pool opens only on the first job."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await running.redis.ping()
    except Exception as exc:  # anything at all means "not ready"; the reason is reported
        return f"redis: {type(exc).__name__}: {exc}"
    try:
        await ping_postgres(running.config.database.url.reveal())
    except Exception as exc:
        return f"postgres: {type(exc).__name__}: {exc}"
    return None


class SystemdNotifier:
    """A supervisor :class:`~alchemy.worker.supervisor.Extension` that keeps systemd told:
    READY, STATUS, WATCHDOG and STOPPING (see the module docstring). Does nothing when the
    settings are empty (not started by systemd)."""

    def __init__(
        self, settings: NotifySettings, *, status_interval: float = STATUS_INTERVAL
    ) -> None:
        self.settings = settings
        self.status_interval = status_interval
        self._notify = Notify(settings.socket) if settings.enabled else None
        self._running: Running | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._status = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SystemdNotifier:
        return cls(NotifySettings.from_environ(environ, os.getpid()))

    async def start(self, running: Running) -> None:
        if self._notify is None:
            return
        self._running = running
        if self.settings.watchdog_interval:
            self._spawn(self._watchdog_loop(self._notify, self.settings.watchdog_interval))
        self._spawn(self._ready_then_status(self._notify, running))

    async def stopping(self) -> None:
        if self._notify is None or self._running is None:
            return
        self._status = f"stopping; jobs in flight: {in_flight_summary(self._running)}"
        self._notify.send("STOPPING=1", status_field(self._status))
        log.info("systemd_stopping")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._notify is not None:
            self._notify.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work, name="systemd"))

    @staticmethod
    async def _watchdog_loop(notify: Notify, interval: float) -> None:
        while True:
            notify.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _ready_then_status(self, notify: Notify, running: Running) -> None:
        ready = await self._wait_until_ready(notify, running)
        if ready and not running.stop_requested.is_set():
            self._status = f"ready; jobs in flight: {in_flight_summary(running)}"
            notify.send("READY=1", status_field(self._status))
            log.info("systemd_ready", status=self._status)
        while True:  # also while draining, until close()
            await asyncio.sleep(self.status_interval)
            state = "stopping" if running.stop_requested.is_set() else "ready"
            status = f"{state}; jobs in flight: {in_flight_summary(running)}"
            if status != self._status:
                self._status = status
                notify.send(status_field(status))

    async def _wait_until_ready(self, notify: Notify, running: Running) -> bool:
        """Check Redis and PostgreSQL until both answer (True) or a stop begins (False)."""
        delay = RETRY_FIRST
        while not running.stop_requested.is_set():
            problem = await dependency_problem(running)
            if problem is None:
                return True
            if running.stop_requested.is_set():
                break
            status = f"waiting for {problem}"
            if status != self._status:
                log.warning("systemd_not_ready", waiting_for=problem, retry_in_s=delay)
                self._status = status
                notify.send(status_field(status))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await running.stop_requested.wait()
            delay = min(delay * 2, RETRY_MAX)
        return False
