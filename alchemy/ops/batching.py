"""Write what observers hear to Redis in batches, never from the engine's call.

The engine calls observers synchronously at each transition. A :class:`BatchWriter` only
appends the item to a buffer there; one task of its own waits ``linger`` seconds (10 ms)
for more, takes everything buffered (up to ``max_batch`` items) and writes it in one step,
then does the same with what arrived meanwhile. So a writer makes at most about a hundred
Redis calls a second however busy the worker is: no job waits for these writes, none costs
a round trip of its own, and Redis does the per-call work (script set-up, trimming) once
per batch. What is written is visible to readers about ``linger`` after it happened.

While Redis is away or refuses (any error) the buffer keeps up to ``max_pending`` items (the
oldest are dropped beyond that, and counted); the same batch is sent again after a capped
backoff, and the writes resume when Redis takes it. A failure is logged once per episode.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Final, Generic, TypeVar

import structlog

from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import Backoff, Episode
from alchemy.worker.supervisor import Running

T = TypeVar("T")
log = structlog.get_logger("alchemy.ops")

DEFAULT_MAX_PENDING: Final = 100_000
DEFAULT_LINGER: Final = 0.01  # seconds a batch waits for more items
# Items per write at most. A write is one Lua call, and Redis answers nothing else while it
# runs (about 10 us an item with events and records): 256 keep it to a few milliseconds, so
# the claims and acknowledgements queued behind it stay quick, and bound the batch's memory.
# Measured on a no-op drain (issue 12): 2,000 -> 256 gave 1.2x the jobs/s and 0.4 MB less
# peak RSS, for a round trip every 128 jobs.
DEFAULT_MAX_BATCH: Final = 256
CLOSE_TIMEOUT: Final = 5.0  # seconds close() waits for the last writes


class BatchWriter(Generic[T]):
    """Buffers items from synchronous callers; one task writes them in batches."""

    name = "batch"

    def __init__(
        self,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        linger: float = DEFAULT_LINGER,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.max_pending = max_pending
        self.linger = linger
        self.max_batch = max_batch
        self.dropped = 0
        self.batches = 0
        self._pending: deque[T] = deque()
        self._redis: RedisClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- what subclasses provide ------------------------------------------------------------
    async def write(self, redis: RedisClient, batch: Sequence[T]) -> None:
        raise NotImplementedError

    # -- buffering --------------------------------------------------------------------------
    def add(self, item: T) -> None:
        """Buffer one item; never blocks, never raises for Redis."""
        if self._closed and self._redis is None:
            return
        pending = self._pending
        pending.append(item)
        if len(pending) > self.max_pending:
            pending.popleft()
            self._count_drop(1)
        if self._task is None and self._redis is not None:
            self._kick()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def attach(self, redis: RedisClient) -> None:
        """Start writing (what was buffered before, too) through ``redis``."""
        self._redis = redis
        if self._pending and self._task is None:
            self._kick()

    def _kick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling an observer directly): stays buffered
            return
        self._task = loop.create_task(self._drain(), name=f"ops-writer:{self.name}")

    async def _drain(self) -> None:
        backoff = Backoff()
        episode = Episode(f"write:{self.name}")
        pending = self._pending
        try:
            while pending:
                if len(pending) < self.max_batch and not self._closed:
                    await asyncio.sleep(self.linger)  # let more items come
                redis = self._redis
                if redis is None:
                    break
                if len(pending) <= self.max_batch:
                    batch = list(pending)
                    pending.clear()
                else:
                    batch = [pending.popleft() for _ in range(self.max_batch)]
                try:
                    await self.write(redis, batch)
                except Exception as exc:
                    # Whatever Redis said (away, MISCONF, NOPERM...), the batch is kept and
                    # sent again after a capped backoff; only max_pending bounds the wait.
                    self._requeue(batch)
                    delay = backoff.next_delay()
                    episode.failed(exc, step="write", writer=self.name, pending=len(pending))
                    await asyncio.sleep(delay)
                    continue
                self.batches += 1
                backoff.reset()
                episode.succeeded()
        finally:
            self._task = None

    def _requeue(self, batch: list[T]) -> None:
        room = self.max_pending - len(self._pending)
        if room < len(batch):
            self._count_drop(len(batch) - max(room, 0))
            batch = batch[len(batch) - max(room, 0) :]
        self._pending.extendleft(reversed(batch))

    def _count_drop(self, count: int) -> None:
        if count <= 0:
            return
        before = self.dropped
        self.dropped += count
        if before == 0 or before // 10_000 != self.dropped // 10_000:
            log.warning("ops_items_dropped", writer=self.name, dropped=self.dropped)

    # -- lifecycle --------------------------------------------------------------------------
    async def flush(self, within: float = CLOSE_TIMEOUT) -> bool:
        """Wait until everything buffered so far is written; False on timeout."""
        deadline = time.monotonic() + within
        while self._pending or self._task is not None:
            if self._task is None:
                if self._redis is None:
                    return False
                self._kick()
            task = self._task
            left = deadline - time.monotonic()
            if task is None or left <= 0:
                return not self._pending and self._task is None
            await asyncio.wait([task], timeout=left)
        return True

    async def close(self, within: float = CLOSE_TIMEOUT) -> None:
        """Write what is left (for at most ``within`` seconds, without lingering), then
        stop; later items are ignored."""
        self._closed = True
        flushed = await self.flush(within)
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not flushed and self._pending:
            self._count_drop(len(self._pending))
            self._pending.clear()
        self._redis = None


class QueueBatchWriter(BatchWriter[T]):
    """A batch writer that writes per-queue keys and lives as a supervisor extension:
    it starts writing through the worker's Redis once the consumers run."""

    def __init__(self, prefix: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        super().__init__(max_pending=max_pending)
        self.prefix = prefix
        self._keys: dict[str, QueueKeys] = {}

    async def start(self, running: Running) -> None:
        self.attach(running.redis)

    async def stopping(self) -> None:
        return None

    # close() comes from BatchWriter: what is buffered is written, then it stops.

    def keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = QueueKeys(self.prefix, queue)
        return keys
