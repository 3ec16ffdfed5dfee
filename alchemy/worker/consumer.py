"""One queue's consumer inside a worker process: it runs the jobs its :class:`Fetcher`
takes, at most ``concurrency`` at once, each as a task of its own, and applies what
:func:`~alchemy.worker.outcome.decide` says about a failure. Finished jobs are acknowledged
by an :class:`AckBatcher`; a reconcile loop returns items that sit in this process's
processing list without anyone running them (a BRPOPLPUSH reply lost with its connection).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog

from alchemy.config import QueueConfig
from alchemy.logs import bind_job_context, fast_info, redact
from alchemy.queue.job import (
    BadJob,
    DeadReason,
    Death,
    Decoded,
    ErrorInfo,
    Job,
    Meta,
    Runner,
    decode_item,
    encode_dead_entry,
    encode_envelope,
)
from alchemy.queue.store import ClaimKind, QueueStore
from alchemy.queue.topology import RedisClient
from alchemy.worker.acks import AckBatcher
from alchemy.worker.connections import Backoff, Episode, until_done
from alchemy.worker.deadlines import Deadlines
from alchemy.worker.dependencies import DependencyMonitor, pause_value
from alchemy.worker.fetcher import Fetcher
from alchemy.worker.handlers import HandlerModule, Unavailable
from alchemy.worker.observer import JobEvent, Observers, Transition
from alchemy.worker.outcome import Action, Decision, decide
from alchemy.worker.owned import Owned
from alchemy.worker.progress import ProgressThrottle, encode_result

log = structlog.get_logger("alchemy.consumer")

DEAD_HOOK_TIMEOUT = 10.0  # seconds a handler module's on_dead may take
# Jobs are claimed ahead (up to PREFETCH_PER_SLOT times ``concurrency`` beyond the free
# slots) while the queue's recent jobs took less than this in their handler and it has no
# rate limit: with quick jobs the next ones are already here when slots free, instead of a
# round trip away; and once some are here, the next claim waits until CLAIM_AGAIN_PER_SLOT
# times ``concurrency`` fit, so each round trip brings many (a claim in flight takes as long
# as a loaded Redis answers, and a batch of transitions keeps Redis busy for a millisecond
# or two). Slow jobs claim only for free slots, so other processes get the rest.
# Measured on a no-op drain at concurrency 10 (issue 12): 4 and 2 took 20 jobs a claim and
# 81 µs of CPU a job; 16 and 8 take about 80 and 63 µs, for 1.37x the jobs/s.
PREFETCH_JOB_S = 0.01
PREFETCH_PER_SLOT = 16
CLAIM_AGAIN_PER_SLOT = 8
RECENT_WEIGHT = 0.1  # the weight of the latest job in the recent handler time
OFF_LOOP_BYTES = 1_048_576  # a too_large job longer than this is encoded in a thread


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str  # completed | retrying | deferred | paused | held | dead
    error: ErrorInfo | None = None
    retry_in_s: float | None = None
    reason: DeadReason | str | None = None
    result: str | None = None  # completed: the handler's return value as JSON (capped)


COMPLETED = Outcome("completed")
# Outcome names to transitions: Transition(name) goes through the Enum machinery (~1 us).
_TRANSITIONS: dict[str, Transition] = {t.value: t for t in Transition}


class QueueConsumer:
    def __init__(
        self,
        *,
        config: QueueConfig,
        store: QueueStore,
        blocking: RedisClient,
        handler: HandlerModule | Unavailable,
        block_timeout: float,
        reconcile_interval: float,
        incarnation: str = "",
        observers: Observers | None = None,
        dependencies: DependencyMonitor | None = None,
        provider_pause: float = 3600.0,
    ) -> None:
        self.config = config
        self.provider_pause = provider_pause  # [budgets] provider_pause
        self.observers = observers or Observers()
        self.store = store
        self.handler = handler
        self.reconcile_interval = reconcile_interval
        self.incarnation = incarnation
        self.dependencies = dependencies
        self.owned = Owned()
        self.progress = ProgressThrottle(config.name, store.identity, self.observers)
        self.acks = AckBatcher(store, self.owned.release)
        self.fetcher = Fetcher(
            config=config,
            store=store,
            blocking=blocking,
            block_timeout=block_timeout,
            owned=self.owned,
            free_slots=self._free_slots,
            wait_for_slot=self._wait_for_slot,
            start=self._start,
            observers=self.observers,
            give_back=self.give_back,
        )
        self._running: dict[asyncio.Task[None], bytes] = {}
        # Claimed while every slot was busy (see PREFETCH_JOB_S): item, claim time in ms,
        # when its rate-limit token is due (None: no rate limit). Owned and in the
        # processing list; started in order as slots free.
        self._ready: deque[tuple[bytes, float, float | None]] = deque()
        # A start later than its token by more than this takes a new token (see _new_token)
        self._late_start_ms = store.rate.late_start_ms
        self._prefetch = 0 if config.rate_limit else PREFETCH_PER_SLOT * config.concurrency
        # The recent handler time of this queue's jobs (weighted); no claiming ahead until
        # jobs have shown to be quick.
        self._recent_s = PREFETCH_JOB_S
        self._timed_out: set[asyncio.Task[None]] = set()  # cancelled by the queue timeout
        self._deadlines = Deadlines(config.timeout, self._time_out)
        self._slot_free = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one running the jobs
        self._runs = itertools.count(1)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # -- slots and starting ---------------------------------------------------------------
    def _free_slots(self) -> int:
        """How many jobs the next claim may take: the free slots, and (quick jobs) a batch
        ahead of them."""
        concurrency = self.config.concurrency
        ahead = self._prefetch if self._recent_s < PREFETCH_JOB_S else 0
        room = concurrency + ahead - len(self._running) - len(self._ready)
        if self._ready and room < CLAIM_AGAIN_PER_SLOT * concurrency:
            return 0  # enough here to go on with: claim again once a batch fits
        return room

    async def _wait_for_slot(self) -> None:
        self._slot_free.clear()
        await self._slot_free.wait()

    async def give_back(self) -> None:
        """Return the jobs claimed ahead, unstarted, to the front of the wait list, in
        their order (the queue is paused, held or throttled now)."""
        while self._ready:
            item, _, _ = self._ready.pop()  # the newest first: the oldest ends at the front
            await until_done(partial(self.store.requeue, item), what="requeue", queue=self.name)
            self.owned.release((item,))

    def request_stop(self) -> None:
        """Stop fetching and starting; running jobs go on (see :meth:`drain`); jobs claimed
        ahead stay in the processing list, which :meth:`drain` returns."""
        self.fetcher.request_stop()
        self._slot_free.set()

    def _start(
        self, item: bytes, picked_ms: float, after_s: float = 0.0, due_ms: float | None = None
    ) -> None:
        """Run the job of ``item`` (taken at ``picked_ms``), ``after_s`` seconds from now
        (the rate limit's next token, due at ``due_ms`` on our wall clock), in a task of its
        own; or, every slot busy, once one frees."""
        self.owned.take(item)
        if len(self._running) >= self.config.concurrency and not after_s:
            self._ready.append((item, picked_ms, due_ms))
            return
        self._run_task(item, picked_ms, after_s, due_ms)

    def _run_task(
        self, item: bytes, picked_ms: float, after_s: float = 0.0, due_ms: float | None = None
    ) -> None:
        # The loop, looked up once: asyncio.get_running_loop() (inside create_task() and
        # current_task()) makes a getpid() system call each time.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        run = self._run_job(item, picked_ms, due_ms)
        task = loop.create_task(_after(after_s, run) if after_s > 0 else run)
        self._running[task] = item
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        item = self._running.pop(task)
        if self._ready and not self.fetcher.stopping.is_set():
            item_, picked_ms, due_ms = self._ready.popleft()
            self._run_task(item_, picked_ms, 0.0, due_ms)
        self._slot_free.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # The job's last step did not reach Redis; whatever is left in the processing
            # list is returned by the reconcile loop, so let go of it.
            self.owned.release((item,))
            log.error("job_step_failed", queue=self.name, error=f"{type(exc).__name__}: {exc}")

    # -- running one job ------------------------------------------------------------------
    async def _run_job(self, item: bytes, picked_ms: float, due_ms: float | None) -> None:
        if (
            due_ms is not None
            and self.fetcher.clock.late_ms(due_ms) > self._late_start_ms
            and not await self._new_token(item, due_ms)
        ):
            return  # too late for its token, and back on the wait list
        try:
            ready = self._prepare(item, picked_ms)
        except Exception as exc:
            # Whatever fails before the handler is called ends the item here: left in the
            # processing list, the reconcile loop would return it to fail again, forever.
            why = f"could not be read: {type(exc).__name__}: {exc}"[:2000]
            ready = BadJob(item, DeadReason.INVALID_JSON, why)
        if isinstance(ready, BadJob):
            error = ErrorInfo("BadJob", ready.message)
            await self._dead_letter(item, ready.raw_job, ready.reason, error, ready.meta)
            return
        decoded, pickup_s = ready
        job = decoded.job
        first_run = job.attempt == 1 and not job.recoveries and not decoded.meta.deferrals
        self.observers.on_job(
            JobEvent(
                self.name,
                Transition.STARTED,
                job.id,
                job.attempt,
                self.store.identity,
                pickup_s=pickup_s,
                recoveries=job.recoveries,
                first_run=first_run,
            )
        )
        # Each job runs in a task of its own, whose context is a copy: binding here never
        # leaks into another job, and needs no reset.
        bind_job_context(self.name, job.id, job.attempt, self.store.identity)
        started = time.perf_counter()
        try:
            outcome = await self._call_handler(item, decoded, picked_ms)
        finally:
            latest = self.progress.finish(job)  # None unless the handler reported
        duration = time.perf_counter() - started
        self._recent_s += RECENT_WEIGHT * (duration - self._recent_s)
        self._log_finished(outcome, round(duration * 1000, 3), pickup_s)
        self.observers.on_job(
            JobEvent(
                self.name,
                _TRANSITIONS[outcome.name],
                job.id,
                job.attempt,
                self.store.identity,
                duration_s=duration,
                error=outcome.error,
                reason=str(outcome.reason) if outcome.reason else None,
                retry_in_s=outcome.retry_in_s,
                recoveries=job.recoveries,
                progress=None if latest is None else latest[0],
                step=None if latest is None else latest[1],
                result=outcome.result,
                first_run=first_run,
            )
        )

    async def _new_token(self, item: bytes, due_ms: float) -> bool:
        """The job's start came too late for its rate-limit token (this process was frozen
        or starved of CPU, or read the claim's reply late): others have used the tokens
        that came after it, so starting now could put more starts than the limit into one
        window. Take a new token and start when it is due, or, with none to be had, let the
        job go back to the front of the wait list. True: start now."""
        fetcher = self.fetcher
        late_ms = fetcher.clock.late_ms(due_ms)
        while True:
            self.observers.on_held_back(self.name, "late_start", 0)
            log.info("start_too_late", queue=self.name, late_ms=round(late_ms, 1))
            confirm = partial(self.store.confirm, item)
            claim = await until_done(confirm, what="confirm", queue=self.name)
            if claim.kind not in (ClaimKind.JOBS, ClaimKind.SCHEDULED):
                # Throttled, paused or held: back at the front of the wait list. Gone: no
                # longer ours (recovered while this process was frozen).
                self.owned.release((item,))
                return False
            due = fetcher.clock.due_ms(claim.redis_ms, claim.wait_ms, time.time() * 1000)
            if claim.wait_ms:
                await asyncio.sleep(claim.wait_ms / 1000)
            late_ms = fetcher.clock.late_ms(due)
            if late_ms <= self._late_start_ms:
                return True

    def _prepare(self, item: bytes, picked_ms: float) -> tuple[Decoded, float | None] | BadJob:
        """The job of ``item`` with its runner, and its pickup time (first attempts)."""
        runner = Runner(self.store.identity, self.incarnation, next(self._runs))
        max_bytes = self.config.max_payload_bytes
        decoded = decode_item(
            item, queue=self.name, max_bytes=max_bytes, runner=runner, reporter=self.progress
        )
        if isinstance(decoded, BadJob):
            return decoded
        job = decoded.job
        pickup_s = None
        if job.enqueued_at is not None and job.attempt == 1 and job.recoveries == 0:
            pickup_s = (picked_ms - job.enqueued_at) / 1000
        return decoded, pickup_s

    async def _call_handler(self, item: bytes, decoded: Decoded, picked_ms: float) -> Outcome:
        meta = decoded.meta
        handler = self.handler
        if isinstance(handler, Unavailable):
            meta = _first_attempt(meta, picked_ms)
            error = ErrorInfo("NoHandler", handler.reason)
            return await self._dead_letter(
                item, decoded.raw_job, DeadReason.NO_HANDLER, error, meta, announce=False
            )
        # The queue timeout cancels this task (one timer for all the running jobs: see
        # Deadlines; asyncio.timeout() would cost three loop timers' worth a job).
        loop = self._loop
        assert loop is not None
        task = asyncio.current_task(loop)
        assert task is not None
        self._deadlines.arm(loop, task)
        timed_out, other_cancels = False, 0
        try:
            try:
                returned = await handler.handle(decoded.job)
            finally:
                # Disarmed before any failure step runs, so the timeout can only ever cancel
                # the handler.
                self._deadlines.disarm(task)
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
        self.acks.add(item)
        if returned is None:
            return COMPLETED
        return Outcome("completed", result=encode_result(returned))

    def _time_out(self, task: asyncio.Task[None]) -> None:
        """The queue timeout of the job ``task`` ran out: cancel its handler."""
        self._timed_out.add(task)
        task.cancel()

    async def _after_failure(
        self, item: bytes, decoded: Decoded, meta: Meta, exc: Exception, error: ErrorInfo
    ) -> Outcome:
        decision = decide(exc, meta, error, self.config, provider_pause=self.provider_pause)
        return await self._apply(item, decoded, decision)

    async def _apply(self, item: bytes, decoded: Decoded, decision: Decision) -> Outcome:
        action, error = decision.action, decision.error
        if action is Action.DEAD:
            assert decision.reason is not None
            await self._tell_handler(decoded.job, Death(str(decision.reason), error))
            return await self._dead_letter(
                item, decoded.raw_job, decision.reason, error, decision.meta, announce=False
            )
        envelope = encode_envelope(decoded.raw_job, decision.meta)
        delay = decision.delay
        step: Callable[[], Awaitable[bool]]
        if action is Action.PAUSE:
            step = partial(self.store.defer_and_pause, item, envelope, delay)
        elif action is Action.HOLD:
            dependency = decision.dependency
            assert dependency is not None
            if decision.hold_for is not None:  # a provider's pause: no probe, a TTL
                hold = pause_value(dependency, error.message, self.store.identity)
                step = partial(self.store.hold, item, envelope, hold, decision.hold_for)
            elif self.dependencies is None:  # nobody probes: a plain return to the front
                step = partial(self.store.requeue_front, item, envelope)
            else:
                hold = self.dependencies.hold_value(dependency, error.message)
                ttl = self.dependencies.hold_ttl
                step = partial(self.store.hold, item, envelope, hold, ttl)
                self.dependencies.down(dependency, self.name, error.message)
        else:  # RETRY and DEFER: back after the delay
            step = partial(self.store.retry, item, envelope, delay)
        await until_done(step, what=action.value, queue=self.name)
        self.owned.release((item,))
        reason = decision.dependency if action is Action.HOLD else decision.waiting_for
        retry_in = None if action is Action.HOLD else round(delay, 3)
        return Outcome(action.value, error=error, retry_in_s=retry_in, reason=reason)

    async def _tell_handler(self, job: Job, death: Death) -> None:
        """The handler module's ``on_dead`` hook, in this process, before the dead letter;
        bounded in time, and what it raises is logged, never fatal."""
        handler = self.handler
        if isinstance(handler, Unavailable) or handler.on_dead is None:
            return
        try:
            async with asyncio.timeout(DEAD_HOOK_TIMEOUT):
                await handler.on_dead(job, death)
        except Exception as exc:
            log.error(
                "on_dead_failed",
                queue=self.name,
                job_id=job.id,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _dead_letter(
        self,
        item: bytes,
        raw_job: bytes,
        reason: DeadReason,
        error: ErrorInfo,
        meta: Meta,
        *,
        announce: bool = True,
    ) -> Outcome:
        """Dead-letter ``item``. ``announce``: also report the transition and log it here
        (for items that never reached :meth:`_run_job`'s own report)."""
        encode = partial(
            encode_dead_entry,
            queue=self.name,
            raw_job=raw_job,
            reason=reason,
            error=error,
            meta=meta,
            dead_at_ms=now_ms(),
        )
        # A too_large job is hashed whole (~2 ms a megabyte): not on the event loop.
        big = reason is DeadReason.TOO_LARGE and len(raw_job) > OFF_LOOP_BYTES
        entry = await asyncio.to_thread(encode) if big else encode()
        await until_done(
            lambda: self.store.dead_letter(item, entry), what="dead_letter", queue=self.name
        )
        self.owned.release((item,))
        if announce:
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

    def _log_finished(self, outcome: Outcome, duration_ms: float, pickup_s: float | None) -> None:
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
            if not fast_info("job_finished", fields):
                log.info("job_finished", **fields)
        else:
            log.warning("job_finished", **fields)

    # -- reconciling ----------------------------------------------------------------------
    async def reconcile_loop(self) -> None:
        """Return jobs found twice in a row in our processing list that nobody here runs."""
        suspects: Counter[bytes] = Counter()
        backoff = Backoff()
        episode = Episode(f"reconcile:{self.name}")
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                listed = Counter(await self.store.processing_items())
            except Exception as exc:
                episode.failed(exc, step="reconcile", queue=self.name)
                await asyncio.sleep(backoff.next_delay())
                continue
            episode.succeeded()
            backoff.reset()
            orphans = listed - self.owned.counts
            lost = orphans & suspects
            suspects = orphans - lost
            for item, count in lost.items():
                for _ in range(count):
                    returned = await until_done(
                        partial(self.store.requeue, item), what="requeue", queue=self.name
                    )
                    if returned:
                        log.warning("job_returned_unowned", queue=self.name, bytes=len(item))

    # -- shutdown -------------------------------------------------------------------------
    async def abandon(self) -> None:
        """Cancel every running job without a Redis step: the processing list is no longer
        ours (another process took our identity and returned what was in it)."""
        self.owned.release(item for item, _, _ in self._ready)
        self._ready.clear()
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, grace: float) -> int:
        """Give running jobs ``grace`` seconds, cancel the rest, acknowledge what finished
        and return every job left in the processing list to the wait list, unchanged."""
        tasks = list(self._running)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.acks.flush()
        return await until_done(self.store.requeue_all, what="requeue_all", queue=self.name)


async def _after(seconds: float, run: Coroutine[Any, Any, None]) -> None:
    """``run`` after ``seconds`` (its pickup time includes the wait)."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        run.close()
        raise
    await run


def _first_attempt(meta: Meta, picked_ms: float) -> Meta:
    """Bookkeeping for a job that goes on to a retry or the dead-letter list: when its first
    attempt started (only paid for on those paths)."""
    if meta.first_attempt_ms is None:
        return replace(meta, first_attempt_ms=int(picked_ms))
    return meta
