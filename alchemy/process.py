"""One worker process, assembled in one place: migrations, Redis, the services handlers
share, the handler modules, then the :class:`~alchemy.worker.supervisor.Supervisor` with
what the caller adds around it (metrics, events, records, the HTTP listener, systemd
notification). Everything opened here is closed here, in reverse order, by one exit stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterable, Sequence

import structlog

from alchemy.config import Config
from alchemy.paid.observe import PaidObserver
from alchemy.services import open_services
from alchemy.worker.connections import RedisClients
from alchemy.worker.handlers import HandlerModule, Unavailable, load_handler
from alchemy.worker.observer import JobObserver
from alchemy.worker.supervisor import Extension, Supervisor, select_queues

log = structlog.get_logger("alchemy.process")


class Worker:
    """``python -m alchemy run``: the queues ``queue_names`` (all enabled ones by default)
    of ``config``. Constructing it does no I/O; :meth:`run` does it all and returns the
    exit status."""

    def __init__(
        self,
        config: Config,
        queue_names: Sequence[str] | None = None,
        *,
        handle_signals: bool = True,
        observers: Sequence[JobObserver] = (),
        extensions: Sequence[Extension] = (),
        paid_observer: PaidObserver | None = None,
    ) -> None:
        self.config = config
        self.paid_observer = paid_observer
        self.queues = select_queues(config, queue_names)
        self.handle_signals = handle_signals
        self.observers = list(observers)
        self.extensions = list(extensions)
        self.stop_requested = asyncio.Event()

    def request_stop(self, reason: str = "requested") -> None:
        if not self.stop_requested.is_set():
            log.info("worker_stopping", reason=reason)
        self.stop_requested.set()

    async def run(self) -> int:
        cfg = self.config
        if cfg.database.migrate_on_start:
            from alchemy.db.migrate import migrate_at_startup

            report = await migrate_at_startup(cfg.database.url.reveal())
            log.info(
                "migrations_checked", applied=len(report.applied), version=report.current_version
            )
        async with contextlib.AsyncExitStack() as stack:
            clients = await stack.enter_async_context(RedisClients(cfg.redis))
            redis = clients.shared
            services = await stack.enter_async_context(
                open_services(cfg, redis, paid_observer=self.paid_observer)
            )
            handlers = load_handlers(self.queues_names())
            await warm_handlers(handlers.values())
            settle_the_heap()
            supervisor = Supervisor(
                cfg,
                self.queues,
                redis=redis,
                blocking=clients.blocking,
                handlers=handlers,
                stop_requested=self.stop_requested,
                probes={"postgres": services.ping_database},
                handle_signals=self.handle_signals,
                observers=self.observers,
                extensions=self.extensions,
            )
            return await supervisor.run()
        raise AssertionError("unreachable")  # pragma: no cover

    def queues_names(self) -> dict[str, str]:
        return {queue.name: queue.handler for queue in self.queues}


def load_handlers(paths: dict[str, str]) -> dict[str, HandlerModule | Unavailable]:
    """Each queue's handler module, loaded once per process."""
    return {queue: load_handler(path) for queue, path in paths.items()}


def settle_the_heap() -> None:
    """Collect the garbage of start-up and move every object left (the modules, classes and
    clients just loaded: about a million with the SDKs) out of the collector's sight, so
    the first full collections during jobs do not walk them all (each such walk took tens
    of milliseconds, in the first jobs' time)."""
    gc.collect()
    gc.freeze()


async def warm_handlers(handlers: Iterable[HandlerModule | Unavailable]) -> None:
    """Await each handler module's ``warm`` hook once (a module serving two queues is
    warmed once), before any consumer fetches. A failed warm-up is logged, not fatal: the
    first job loads what is missing, as it would without the hook."""
    seen: set[object] = set()
    for handler in handlers:
        if not isinstance(handler, HandlerModule) or handler.warm is None:
            continue
        if handler.warm in seen:
            continue
        seen.add(handler.warm)
        name = f"{handler.warm.__module__}.{handler.warm.__qualname__}"
        started = time.monotonic()
        try:
            await handler.warm()
        except Exception as exc:
            log.warning("handler_warm_failed", hook=name, error=f"{type(exc).__name__}: {exc}")
            continue
        log.info("handler_warmed", hook=name, ms=round((time.monotonic() - started) * 1000, 1))
