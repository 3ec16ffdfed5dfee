"""One queue's consumer inside a worker process.

A fetch loop claims jobs (several per round trip when there is a backlog, each with a
rate-limit token) and blocks on BRPOPLPUSH on its own connection when the queue is empty.
Each job runs as a task, at most ``concurrency`` at once. Acknowledgements are batched by an
ack loop; a reconcile loop returns jobs that sit in this process's processing list without
anyone running them (a BRPOPLPUSH reply lost with its connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial

import structlog
from redis.asyncio import Redis

from alchemy.config import QueueConfig
from alchemy.errors import PermanentError, RateLimitedError, RetryableError
from alchemy.logs import redact
from alchemy.queue.backoff import backoff_delay
from alchemy.queue.job import (
    BadJob,
    DeadReason,
    Decoded,
    ErrorInfo,
    Meta,
    decode_item,
    encode_dead_entry,
    encode_envelope,
)
from alchemy.queue.store import Claim, ClaimKind, QueueStore
from alchemy.worker.connections import Backoff, is_transient, until_done
from alchemy.worker.handlers import Handler, Unavailable
from alchemy.worker.observer import JobEvent, Observers, Transition

log = structlog.get_logger("alchemy.consumer")


def now_ms() -> int:
    return int(time.time() * 1000)


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, seconds))


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str  # completed | retrying | dead | paused
    error: ErrorInfo | None = None
    retry_in_s: float | None = None
    reason: DeadReason | None = None


class QueueConsumer:
    def __init__(
        self,
        *,
        config: QueueConfig,
        store: QueueStore,
        blocking: Redis,
        handler: Handler | Unavailable,
        block_timeout: float,
        reconcile_interval: float,
        observers: Observers | None = None,
    ) -> None:
        self.config = config
        self.observers = observers or Observers()
        self.store = store
        self.blocking = blocking
        self.handler = handler
        self.block_timeout = block_timeout
        self.reconcile_interval = reconcile_interval
        self._running: dict[asyncio.Task[None], bytes] = {}
        self._timed_out: set[asyncio.Task[None]] = set()  # cancelled by the queue timeout
        self._owned: Counter[bytes] = Counter()
        self._slot_free = asyncio.Event()
        self._acks: list[bytes] = []
        self._acks_ready = asyncio.Event()
        self._acks_in_flight = 0
        self._acks_done = asyncio.Event()
        self._acks_done.set()
        self._stopping = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- fetching -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop fetching; running jobs go on (see :meth:`drain`)."""
        self._stopping.set()
        self._slot_free.set()

    async def fetch_loop(self) -> None:
        stopping = self._stopping
        backoff = Backoff()
        while not stopping.is_set():
            free = self.config.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                claim = await self.store.claim(free)
                if claim.kind is ClaimKind.EMPTY:
                    claim = await self._block_fetch(stopping, claim.wait_ms)
                backoff.reset()
            except Exception as exc:
                delay = backoff.next_delay()
                level = log.warning if is_transient(exc) else log.error
                level(
                    "fetch_failed",
                    queue=self.name,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 3),
                )
                await sleep_unless(stopping, delay)
                continue
            await self._act_on(claim, stopping)

    async def _act_on(self, claim: Claim, stopping: asyncio.Event) -> None:
        if claim.kind is ClaimKind.JOBS:
            picked = time.time() * 1000
            for item in claim.items:
                self._start(item, picked)
        elif claim.kind is ClaimKind.THROTTLED:
            self.observers.on_held_back(self.name, "throttled", claim.wait_ms)
            await sleep_unless(stopping, claim.wait_ms / 1000 + random.random() * 0.01)
        elif claim.kind is ClaimKind.PAUSED:
            self.observers.on_held_back(self.name, "paused", claim.wait_ms)
            wait_ms = 1000 if claim.wait_ms < 0 else min(claim.wait_ms, 1000)
            await sleep_unless(stopping, wait_ms / 1000)

    async def _block_fetch(self, stopping: asyncio.Event, next_due_ms: int) -> Claim:
        # Wake up in time to promote the next due retry (the claim step promotes them).
        block = self.block_timeout
        if next_due_ms >= 0:
            block = min(block, max(0.01, next_due_ms / 1000))
        item = await self.store.block_fetch(self.blocking, block)
        if item is None:
            await self.store.refund()
            return Claim(ClaimKind.EMPTY)
        self._owned[item] += 1
        try:
            if stopping.is_set():
                await until_done(lambda: self.store.requeue(item), what="requeue")
                await self.store.refund()
                return Claim(ClaimKind.EMPTY)
            return await self.store.confirm(item)
        finally:
            self._release((item,))

    def _start(self, item: bytes, picked_ms: float) -> None:
        self._owned[item] += 1
        task = asyncio.create_task(self._run_job(item, picked_ms))
        self._running[task] = item
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        item = self._running.pop(task)
        self._slot_free.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # The job's last step did not reach Redis; whatever is left in the processing
            # list is returned by the reconcile loop, so let go of it.
            self._release((item,))
            log.error("job_step_failed", queue=self.name, error=f"{type(exc).__name__}: {exc}")

    # -- running one job ------------------------------------------------------------------
    async def _run_job(self, item: bytes, picked_ms: float) -> None:
        decoded = decode_item(item, queue=self.name, max_bytes=self.config.max_payload_bytes)
        if isinstance(decoded, BadJob):
            error = ErrorInfo("BadJob", decoded.message)
            await self._dead_letter(item, decoded.raw_job, decoded.reason, error, decoded.meta)
            return
        job, meta = decoded.job, decoded.meta
        pickup_s = None
        if job.enqueued_at is not None and job.attempt == 1 and job.recoveries == 0:
            pickup_s = (picked_ms - job.enqueued_at) / 1000
        self.observers.on_job(
            JobEvent(
                self.name,
                Transition.STARTED,
                job.id,
                job.attempt,
                self.store.identity,
                pickup_s=pickup_s,
                recoveries=job.recoveries,
            )
        )
        # Each job runs in a task of its own, whose context is a copy: binding here never
        # leaks into another job, and needs no reset.
        structlog.contextvars.bind_contextvars(
            queue=self.name, job_id=job.id, attempt=job.attempt, worker=self.store.identity
        )
        started = time.perf_counter()
        outcome = await self._call_handler(item, decoded, meta, picked_ms)
        duration = time.perf_counter() - started
        self._log_finished(outcome, decoded, round(duration * 1000, 3), pickup_s)
        self.observers.on_job(
            JobEvent(
                self.name,
                Transition(outcome.name),
                job.id,
                job.attempt,
                self.store.identity,
                duration_s=duration,
                error=outcome.error,
                reason=str(outcome.reason) if outcome.reason else None,
                retry_in_s=outcome.retry_in_s,
                recoveries=job.recoveries,
            )
        )

    async def _call_handler(
        self, item: bytes, decoded: Decoded, meta: Meta, picked_ms: float
    ) -> Outcome:
        if isinstance(self.handler, Unavailable):
            meta = _first_attempt(meta, picked_ms)
            error = ErrorInfo("NoHandler", self.handler.reason)
            return await self._dead_letter(
                item, decoded.raw_job, DeadReason.NO_HANDLER, error, meta, log_it=False
            )
        # The queue timeout: a timer that cancels this task (a plain loop timer costs a third
        # of asyncio.timeout(), which matters at thousands of jobs a second).
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        timer = loop.call_at(loop.time() + self.config.timeout, self._time_out, task)
        timed_out, other_cancels = False, 0
        try:
            try:
                await self.handler(decoded.job)
            finally:
                # Disarmed before any failure step runs, so the timer can only ever cancel
                # the handler.
                timer.cancel()
                if task in self._timed_out:
                    self._timed_out.discard(task)
                    timed_out, other_cancels = True, task.uncancel()
        except asyncio.CancelledError as exc:
            if timed_out:
                if other_cancels:
                    raise  # shutdown past its grace as well: returned unchanged
                timeout = self.config.timeout
                error = ErrorInfo(
                    "JobTimeout", f"handler ran past the queue timeout of {timeout:g}s"
                )
                failure: Exception = TimeoutError(error.message)
            elif task.cancelling():
                raise  # shutdown past its grace: the job is returned unchanged
            else:
                # The handler raised CancelledError itself (an inner task was cancelled):
                # that is a failed attempt like any other.
                error = ErrorInfo("CancelledError", redact(str(exc))[:2000] or "cancelled")
                failure = RuntimeError("handler raised CancelledError")
            meta = _first_attempt(meta, picked_ms)
            return await asyncio.shield(self._after_failure(item, decoded, meta, failure, error))
        except Exception as exc:
            error = ErrorInfo(type(exc).__name__, redact(str(exc))[:2000])
            meta = _first_attempt(meta, picked_ms)
            return await asyncio.shield(self._after_failure(item, decoded, meta, exc, error))
        # (A handler that swallowed the timeout's cancellation and returned has completed.)
        self._acks.append(item)
        self._acks_ready.set()
        return Outcome("completed")

    def _time_out(self, task: asyncio.Task[None]) -> None:
        """The queue timeout of the job ``task`` ran out: cancel its handler."""
        self._timed_out.add(task)
        task.cancel()

    async def _after_failure(
        self, item: bytes, decoded: Decoded, meta: Meta, exc: Exception, error: ErrorInfo
    ) -> Outcome:
        if isinstance(exc, RateLimitedError):
            envelope = encode_envelope(decoded.raw_job, replace(meta, last_error=error))
            await until_done(
                lambda: self.store.defer_and_pause(item, envelope, exc.retry_after),
                what="defer_and_pause",
            )
            self._release((item,))
            return Outcome("paused", error=error, retry_in_s=exc.retry_after)
        if isinstance(exc, PermanentError):
            reason = DeadReason.PERMANENT_ERROR
            return await self._dead_letter(item, decoded.raw_job, reason, error, meta, False)
        if meta.attempt >= self.config.max_attempts:
            reason = DeadReason.MAX_ATTEMPTS
            return await self._dead_letter(item, decoded.raw_job, reason, error, meta, False)
        delay = self._retry_delay(exc, meta.attempt)
        next_meta = replace(meta, attempt=meta.attempt + 1, last_error=error)
        envelope = encode_envelope(decoded.raw_job, next_meta)
        await until_done(lambda: self.store.retry(item, envelope, delay), what="retry")
        self._release((item,))
        return Outcome("retrying", error=error, retry_in_s=round(delay, 3))

    def _retry_delay(self, exc: Exception, attempt: int) -> float:
        if isinstance(exc, RetryableError) and exc.delay is not None:
            return exc.delay
        q = self.config
        return backoff_delay(
            attempt,
            initial=q.backoff_initial,
            multiplier=q.backoff_multiplier,
            maximum=q.backoff_max,
            jitter=q.backoff_jitter,
        )

    async def _dead_letter(
        self,
        item: bytes,
        raw_job: bytes,
        reason: DeadReason,
        error: ErrorInfo,
        meta: Meta,
        log_it: bool = True,
    ) -> Outcome:
        entry = encode_dead_entry(
            queue=self.name,
            raw_job=raw_job,
            reason=reason,
            error=error,
            meta=meta,
            dead_at_ms=now_ms(),
        )
        await until_done(lambda: self.store.dead_letter(item, entry), what="dead_letter")
        self._release((item,))
        if log_it:
            self.observers.on_job(
                JobEvent(
                    self.name,
                    Transition.DEAD,
                    meta.id or None,
                    meta.attempt,
                    self.store.identity,
                    error=error,
                    reason=str(reason),
                )
            )
            log.warning(
                "job_finished",
                queue=self.name,
                job_id=meta.id or None,
                outcome="dead",
                reason=str(reason),
                error_type=error.type,
                error_message=error.message,
                worker=self.store.identity,
            )
        return Outcome("dead", error=error, reason=reason)

    def _log_finished(
        self, outcome: Outcome, decoded: Decoded, duration_ms: float, pickup_s: float | None
    ) -> None:
        fields: dict[str, object] = {"outcome": outcome.name, "duration_ms": duration_ms}
        if pickup_s is not None:
            fields["pickup_ms"] = round(pickup_s * 1000, 3)
        if outcome.error is not None:
            fields["error_type"] = outcome.error.type
            fields["error_message"] = outcome.error.message
        if outcome.retry_in_s is not None:
            fields["retry_in_s"] = outcome.retry_in_s
        if outcome.reason is not None:
            fields["reason"] = str(outcome.reason)
        if outcome.name == "completed":
            log.info("job_finished", **fields)
        else:
            log.warning("job_finished", **fields)

    # -- acknowledgements -----------------------------------------------------------------
    async def ack_loop(self) -> None:
        """Acknowledge finished jobs, many per round trip under load. Runs until cancelled."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            batch, self._acks = self._acks, []
            if not batch:
                continue
            self._acks_done.clear()
            try:
                await asyncio.shield(until_done(partial(self.store.ack, batch), what="ack"))
                self._release(batch)
            finally:
                if not self._acks:
                    self._acks_done.set()

    async def flush_acks(self) -> None:
        while self._acks or not self._acks_done.is_set():
            self._acks_ready.set()
            await self._acks_done.wait()
            await asyncio.sleep(0)

    def _release(self, items: Iterable[bytes]) -> None:
        for item in items:
            left = self._owned[item] - 1
            if left > 0:
                self._owned[item] = left
            else:
                del self._owned[item]

    # -- reconciling ----------------------------------------------------------------------
    async def reconcile_loop(self) -> None:
        """Return jobs found twice in a row in our processing list that nobody here runs."""
        suspects: Counter[bytes] = Counter()
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                listed = Counter(await self.store.processing_items())
            except Exception as exc:
                if not is_transient(exc):
                    log.error("reconcile_failed", queue=self.name, error=repr(exc))
                continue
            orphans = listed - self._owned
            lost = orphans & suspects
            suspects = orphans - lost
            for item, count in lost.items():
                for _ in range(count):
                    if await self.store.requeue(item):
                        log.warning("job_returned_unowned", queue=self.name, bytes=len(item))

    # -- shutdown -------------------------------------------------------------------------
    async def drain(self, grace: float) -> int:
        """Give running jobs ``grace`` seconds, cancel the rest, acknowledge what finished
        and return every job left in the processing list to the wait list, unchanged."""
        tasks = list(self._running)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.flush_acks()
        return await until_done(self.store.requeue_all, what="requeue_all")


def _first_attempt(meta: Meta, picked_ms: float) -> Meta:
    """Bookkeeping for a job that goes on to a retry or the dead-letter list: when its first
    attempt started (only paid for on those paths)."""
    if meta.first_attempt_ms is None:
        return replace(meta, first_attempt_ms=int(picked_ms))
    return meta
