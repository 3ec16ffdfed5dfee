"""The one asyncio supervisor of a worker process: it starts a consumer per queue, keeps
the heartbeats and recovery sweeps going, watches every background task, and stops
everything in order on a signal. What it runs on (Redis, the handlers) is opened by
:mod:`alchemy.process`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from alchemy.config import Config, QueueConfig
from alchemy.errors import ConfigError
from alchemy.logs import flush_logs
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.store import QueueStore, RateLimit
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import until_done
from alchemy.worker.consumer import QueueConsumer
from alchemy.worker.dependencies import DependencyMonitor, Probe
from alchemy.worker.handlers import HandlerModule, Unavailable
from alchemy.worker.health import process_health
from alchemy.worker.membership import Membership
from alchemy.worker.observer import JobObserver, Observers

log = structlog.get_logger("alchemy.supervisor")

DRAIN_REDIS_GRACE = 10.0  # seconds past the shutdown grace to finish the Redis steps
CANCEL_AGAIN_S = 0.5  # a task still running this long after its cancellation is cancelled again


def select_queues(config: Config, names: Sequence[str] | None) -> list[QueueConfig]:
    if not names:
        return [q for q in config.queues if q.enabled]
    known = {q.name: q for q in config.queues}
    for name in names:
        if name not in known:
            raise ConfigError("--queues", f"no queue named {name!r} in {config.source}")
    return [known[name] for name in names]


def rate_of(queue: QueueConfig) -> RateLimit:
    return RateLimit(queue.rate_limit, queue.rate_period, queue.rate_burst)


@dataclass(frozen=True, slots=True)
class Running:
    """What an extension may look at while the worker runs."""

    config: Config
    redis: RedisClient
    identity: str
    consumers: Sequence[QueueConsumer]
    stop_requested: asyncio.Event
    blocking: Callable[[], RedisClient] | None = None  # a new client for one blocking reader

    def in_flight(self) -> int:
        return sum(c.in_flight for c in self.consumers)


class Extension(Protocol):
    """Something that lives beside the consumers: an HTTP listener, systemd notification.

    ``start`` runs once the consumers run (a failure there stops the worker); ``stopping``
    when a stop begins, before running jobs drain; ``close`` at the very end."""

    async def start(self, running: Running) -> None: ...

    async def stopping(self) -> None: ...

    async def close(self) -> None: ...


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again any that swallowed the
    cancellation (a library that catches CancelledError mid-call and goes on)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_S)


class Supervisor:
    def __init__(
        self,
        config: Config,
        queues: Sequence[QueueConfig],
        *,
        redis: RedisClient,
        blocking: Callable[[], RedisClient],
        handlers: Mapping[str, HandlerModule | Unavailable],
        stop_requested: asyncio.Event,
        probes: Mapping[str, Probe] | None = None,
        handle_signals: bool = True,
        observers: Sequence[JobObserver] = (),
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.extensions = list(extensions)
        self.observers = Observers(observers)
        self.config = config
        self.redis = redis
        self.blocking = blocking  # a new client for one consumer's blocking fetches
        self.handlers = handlers
        self.probes = probes or {}
        self.dependencies: DependencyMonitor | None = None
        self.handle_signals = handle_signals
        self.queues = list(queues)
        self.stop_requested = stop_requested
        self.failed_task: str | None = None
        self._tasks_ending = False
        self._signals = 0

    def request_stop(self, reason: str = "requested") -> None:
        if not self.stop_requested.is_set():
            log.info("worker_stopping", reason=reason)
        self.stop_requested.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._signals > 1:
            log.warning("worker_forced_exit", signal=name)
            flush_logs()
            os._exit(130)
        self.request_stop(name)

    async def run(self) -> int:
        if not self.queues:
            raise ConfigError("queues", "no enabled queue to run")
        cfg = self.config
        identity = cfg.worker.identity
        redis = self.redis
        async with contextlib.AsyncExitStack() as stack:
            stores = [
                QueueStore(
                    redis,
                    prefix=cfg.redis.prefix,
                    queue=queue.name,
                    identity=identity,
                    rate=rate_of(queue),
                    max_dead=queue.max_dead,
                )
                for queue in self.queues
            ]
            membership = Membership(
                stores,
                cfg.worker,
                self.observers,
                claims=IdentityClaims(redis, prefix=cfg.redis.prefix),
                handlers=self.handlers,
                on_identity_lost=lambda: self.request_stop("identity lost"),
                extras={"providers": cfg.providers.in_use()},
            )
            dependencies = DependencyMonitor(
                identity=identity,
                stores=stores,
                requires={
                    name: handler.requires
                    for name, handler in self.handlers.items()
                    if isinstance(handler, HandlerModule)
                },
                probes=self.probes,
            )
            self.dependencies = dependencies
            stack.push_async_callback(dependencies.close)
            consumers: list[QueueConsumer] = []
            for queue, store in zip(self.queues, stores, strict=True):
                blocking = self.blocking()  # closed by its owner, with the shared one
                handler = self.handlers[queue.name]
                if isinstance(handler, Unavailable):
                    log.error("handler_unavailable", queue=queue.name, reason=handler.reason)
                consumers.append(
                    QueueConsumer(
                        config=queue,
                        store=store,
                        blocking=blocking,
                        handler=handler,
                        block_timeout=cfg.redis.block_timeout,
                        reconcile_interval=cfg.worker.reconcile_interval,
                        incarnation=membership.incarnation,
                        observers=self.observers,
                        dependencies=dependencies,
                        provider_pause=cfg.budgets.provider_pause,
                    )
                )
            if self.handle_signals:
                stack.enter_context(self._signal_handlers())
            if not await self._unless_stopped(self._join(membership)):
                log.info("worker_stopped", returned_to_wait=0)
                return 0
            for extension in reversed(self.extensions):
                stack.push_async_callback(extension.close)
            running = Running(
                cfg, redis, identity, consumers, self.stop_requested, blocking=self.blocking
            )
            return await self._serve(membership, consumers, running)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _join(membership: Membership) -> None:
        await until_done(membership.claim_identity, what="claim_identity")
        await until_done(membership.recover_own, what="recover_own")
        await until_done(membership.beat, what="heartbeat")

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` (which may wait on Redis for long) unless a stop comes first."""
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    async def _serve(
        self, membership: Membership, consumers: list[QueueConsumer], running: Running
    ) -> int:
        background = [
            self._watched(membership.heartbeat_loop(), "heartbeat"),
            self._watched(membership.recovery_loop(), "recovery"),
        ]
        for consumer in consumers:
            background.append(self._watched(consumer.acks.run(), f"ack:{consumer.name}"))
            background.append(
                self._watched(consumer.reconcile_loop(), f"reconcile:{consumer.name}")
            )
        fetchers = [self._watched(c.fetcher.run(), f"fetch:{c.name}") for c in consumers]
        log.info(
            "worker_started",
            worker=membership.identity,
            pid=os.getpid(),
            queues=[c.name for c in consumers],
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
        )
        try:
            for extension in self.extensions:
                await extension.start(running)
            await self.stop_requested.wait()
            stopped_at = time.monotonic()
            for extension in self.extensions:
                await extension.stopping()
            for consumer in consumers:
                consumer.request_stop()
            await asyncio.gather(*fetchers, return_exceptions=True)
            if membership.identity_lost:
                # Another process runs with our identity, on our processing lists: leave
                # them to it, acknowledge and return nothing, and go.
                for consumer in consumers:
                    await consumer.abandon()
                log.error("worker_stopped", reason="identity lost", returned_to_wait=0)
                return 1
            grace = max(0.0, self.config.worker.shutdown_timeout - (time.monotonic() - stopped_at))
            in_flight = sum(c.in_flight for c in consumers)
            log.info("worker_draining", in_flight=in_flight, grace_s=round(grace, 3))
            try:
                # Past this, Redis is away: what is left stays in our processing lists and
                # is returned when this identity starts again (or by another's sweep).
                async with asyncio.timeout(grace + DRAIN_REDIS_GRACE):
                    returned = await asyncio.gather(*(c.drain(grace) for c in consumers))
                    # Only now stop the heartbeats: leaving earlier would let a sweep take
                    # jobs still finishing; beating after leaving would re-register us.
                    self._tasks_ending = True
                    await cancel_and_wait(background)
                    for consumer in consumers:
                        await until_done(consumer.store.deregister, what="deregister")
                    await until_done(membership.release_identity, what="release_identity")
            except TimeoutError:
                log.error("worker_stopped_unclean", reason="redis unreachable while draining")
                return 1
            if self.failed_task is not None:
                log.error("worker_stopped", returned_to_wait=sum(returned), failed=self.failed_task)
                return 1
            log.info("worker_stopped", returned_to_wait=sum(returned))
            return 0
        finally:
            self._tasks_ending = True
            await cancel_and_wait([*fetchers, *background])

    def _watched(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task that must run until the stop: if it ends before (a bug; Redis
        errors never end one), the process stops and exits with status 1 rather than run
        half-alive, and ``/readyz`` names the task meanwhile."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        name = task.get_name()
        if name.startswith("fetch:") and self.stop_requested.is_set():
            return  # fetchers end when a stop begins
        if self._tasks_ending:
            return
        if task.cancelled():
            error = "cancelled"
        else:
            exc = task.exception()
            error = "returned" if exc is None else f"{type(exc).__name__}: {exc}"
        self.failed_task = self.failed_task or name
        process_health.fail(f"task:{name}", f"ended: {error}")
        log.error("background_task_ended", task=name, error=error)
        self.request_stop(f"background task {name} ended")

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
