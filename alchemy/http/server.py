"""The worker extension that serves the HTTP listener (aiohttp ``AppRunner`` on a socket).

``run`` binds the socket first, before the process claims its identity or takes a job, so
a port in use stops the start (exit 78, naming ``http.port``) with nothing taken; the app
starts answering once the consumers run (connections wait in the socket's backlog until
then) and closes at the very end of a stop. From the moment a stop begins, ``/readyz``
answers 503 (``stopping``) while the rest keeps answering.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Final

import structlog
from aiohttp import web

from alchemy.config import Config
from alchemy.errors import AlchemyError, ConfigError
from alchemy.http.app import create_app
from alchemy.http.budgets import BudgetBook
from alchemy.http.deps import Deps
from alchemy.http.overview import OverviewCache
from alchemy.logs import redact
from alchemy.ops.metrics import Metrics, QueueCollector
from alchemy.queue.admin import QueueStatus
from alchemy.services import Services, current_services
from alchemy.worker.health import process_health
from alchemy.worker.supervisor import Running

log = structlog.get_logger("alchemy.http")

CHECK_TIMEOUT: Final = 2.0  # seconds for Redis to answer PING, PostgreSQL SELECT 1
READY_TTL: Final = 0.5  # seconds a readiness answer is reused by concurrent probes


class HttpServer:
    """Serves :func:`alchemy.http.app.create_app` on ``[http] host:port``.

    ``port`` overrides the configured port (tests pass 0 to let the system pick one; the
    bound port is then in :attr:`port`)."""

    def __init__(
        self, config: Config, *, metrics: Metrics | None = None, port: int | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.host = config.http.host
        self.port = config.http.port if port is None else port
        self.running: Running | None = None
        self.runner: web.AppRunner | None = None
        self._services: Services | None = None
        self._stopping = False
        self._ready_at = float("-inf")
        self._ready: list[str] = []
        self._ready_lock = asyncio.Lock()
        self._socket: socket.socket | None = None  # bound by bind(), served by start()

    def bind(self) -> None:
        """Take the configured address now (no event loop needed). A port in use or an
        address that cannot be had is a :class:`ConfigError` naming ``http.port``."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            listener = socket.socket(family, kind, proto)
        except OSError as exc:
            raise self._cannot_listen("http.host", exc) from None
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise self._cannot_listen("http.port", exc) from None
        self._socket = listener
        self.port = listener.getsockname()[1]

    def _cannot_listen(self, key: str, exc: OSError) -> ConfigError:
        return ConfigError(key, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}")

    # -- Extension --------------------------------------------------------------------------
    async def start(self, running: Running) -> None:
        self.running = running
        try:
            self._services = current_services()
        except RuntimeError:
            self._services = None
        cfg = self.config
        overview = OverviewCache(
            running.redis,
            cfg.redis.prefix,
            [q.name for q in cfg.queues],
            with_throughput=cfg.events.enabled,
        )
        if self.metrics is not None:
            self.metrics.watch_queues(self._collector(overview, running))
        deps = Deps(
            cfg,
            running.redis,
            running.identity,
            overview,
            self.metrics,
            self.readiness,
            blocking=running.blocking,
            budgets=None if self._services is None else BudgetBook(cfg, self._services.db),
        )
        runner = web.AppRunner(create_app(deps), handle_signals=False, access_log=None)
        await runner.setup()
        listener, self._socket = self._socket, None
        try:
            if listener is not None:
                await web.SockSite(runner, listener).start()
            else:
                await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise AlchemyError(
                f"http: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.runner = runner
        self.port = _bound_port(runner, self.port)
        log.info("http_listening", host=self.host, port=self.port)

    async def stopping(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        listener, self._socket = self._socket, None
        if listener is not None:  # bound, never served (the start stopped before)
            listener.close()
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _collector(overview: OverviewCache, running: Running) -> QueueCollector:
        served = {c.name for c in running.consumers}

        def statuses() -> dict[str, QueueStatus] | None:
            last = overview.last
            if last is None:
                return None
            return {q: s for q, s in last.statuses.items() if q in served}

        def in_flight() -> dict[str, int]:
            return {c.name: c.in_flight for c in running.consumers}

        return QueueCollector(statuses, in_flight)

    # -- readiness --------------------------------------------------------------------------
    async def readiness(self) -> list[str]:
        """Why this process should not get work now; empty when it is ready."""
        if time.monotonic() - self._ready_at < READY_TTL:
            return list(self._ready)
        async with self._ready_lock:
            if time.monotonic() - self._ready_at >= READY_TTL:
                self._ready = await self._check()
                self._ready_at = time.monotonic()
        return list(self._ready)

    async def _check(self) -> list[str]:
        reasons: list[str] = []
        running = self.running
        if running is None:
            return ["consumers: not started"]
        if self._stopping or running.stop_requested.is_set():
            reasons.append("stopping: the worker is shutting down")
        # Steps failing right now, dependencies down (their queues held), tasks that ended.
        reasons.extend(process_health.describe())
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await running.redis.ping()
        except Exception as exc:
            reasons.append(f"redis: {_describe(exc)}")
        if self.config.http.check_database and self._services is not None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    pool = await self._services.db()
                    await pool.fetchval("SELECT 1")
            except Exception as exc:
                reasons.append(f"postgres: {_describe(exc)}")
        return reasons


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {CHECK_TIMEOUT:g}s"
    return redact(f"{type(exc).__name__}: {exc}")[:300]


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    addresses: list[Any] = list(runner.addresses)
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
