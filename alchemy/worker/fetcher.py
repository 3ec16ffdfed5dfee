"""Taking one queue's jobs for one process.

The fetch loop claims jobs (several per round trip when there is a backlog, each with a
rate-limit token) while there are free slots, and blocks on BRPOPLPUSH on a connection of
its own when the queue is empty. Throttled, paused or held, it sleeps until the claim says
to look again. Redis errors never end it: it backs off (capped) and tries again, logging
once per episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

from redis.asyncio.cluster import RedisCluster

from alchemy.config import QueueConfig
from alchemy.queue.store import Claim, ClaimKind, QueueStore
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import Backoff, Episode, until_done
from alchemy.worker.observer import Observers
from alchemy.worker.owned import Owned
from alchemy.worker.token_clock import TokenClock

PAUSED_LOOK_S = 1.0  # a paused or held queue is looked at again after at most this
# A fetch that fails (Redis away, failing over) is tried again after 50 ms, doubling up to
# this: however long the outage, consumers take jobs again within about 2 s of its end.
FETCH_BACKOFF_MAX_S = 2.0
THROTTLE_SPREAD_S = 0.002  # random extra sleep, so throttled processes do not all wake at once


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stopping`` is set."""
    if seconds <= 0 or stopping.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()


class Fetcher:
    def __init__(
        self,
        *,
        config: QueueConfig,
        store: QueueStore,
        blocking: RedisClient,
        block_timeout: float,
        owned: Owned,
        free_slots: Callable[[], int],
        wait_for_slot: Callable[[], Awaitable[None]],
        start: Callable[[bytes, float, float, float | None], None],
        observers: Observers,
        give_back: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``give_back``: return the jobs claimed ahead of free slots (paused or held)."""
        self.config = config
        self.store = store
        self.blocking = blocking
        self.block_timeout = block_timeout
        self.owned = owned
        self.free_slots = free_slots
        self.wait_for_slot = wait_for_slot
        self.start = start
        self.observers = observers
        self.give_back = give_back
        self.stopping = asyncio.Event()
        self.clock = TokenClock()

    @property
    def name(self) -> str:
        return self.config.name

    def due_ms(self, claim: Claim, read_ms: float) -> float | None:
        """When the tokens of ``claim`` (read at ``read_ms``) fall due, on our wall clock;
        None on a queue without a rate limit."""
        if not self.store.rate.limit:
            return None
        return self.clock.due_ms(claim.redis_ms, claim.wait_ms, read_ms)

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        stopping = self.stopping
        backoff = Backoff(maximum=FETCH_BACKOFF_MAX_S)
        episode = Episode(f"fetch:{self.name}")
        while not stopping.is_set():
            free = self.free_slots()
            if free <= 0:
                await self.wait_for_slot()
                continue
            try:
                claim = await self.store.claim(free)
                if claim.kind is ClaimKind.EMPTY:
                    claim = await self._block_fetch(claim.wait_ms)
            except Exception as exc:
                delay = backoff.next_delay()
                episode.failed(exc, step="fetch", queue=self.name, retry_in_s=round(delay, 3))
                await sleep_unless(stopping, delay)
                continue
            backoff.reset()
            episode.succeeded()
            await self._act_on(claim)

    async def _act_on(self, claim: Claim) -> None:
        if claim.kind is ClaimKind.JOBS:
            picked = time.time() * 1000
            due = self.due_ms(claim, picked)
            for item in claim.items:
                self.start(item, picked, 0.0, due)
        elif claim.kind is ClaimKind.SCHEDULED:
            # Taken with the next rate-limit token: the job starts when the token arrives.
            [item] = claim.items
            picked = time.time() * 1000
            self.start(item, picked, claim.wait_ms / 1000, self.due_ms(claim, picked))
        elif claim.kind is ClaimKind.THROTTLED:
            self.observers.on_held_back(self.name, "throttled", claim.wait_ms)
            spread = random.random() * THROTTLE_SPREAD_S
            await sleep_unless(self.stopping, claim.wait_ms / 1000 + spread)
        elif claim.kind in (ClaimKind.PAUSED, ClaimKind.HELD):
            why = "paused" if claim.kind is ClaimKind.PAUSED else "held"
            self.observers.on_held_back(self.name, why, claim.wait_ms)
            if self.give_back is not None:
                await self.give_back()
            wait_s = claim.wait_ms / 1000 if claim.wait_ms >= 0 else PAUSED_LOOK_S
            await sleep_unless(self.stopping, min(wait_s, PAUSED_LOOK_S))

    async def _block_fetch(self, next_due_ms: int) -> Claim:
        # Wake up in time to promote the next due retry (the claim step promotes them).
        block = self.block_timeout
        if next_due_ms >= 0:
            block = min(block, max(0.01, next_due_ms / 1000))
        blocking = self.blocking
        gates_open = False
        if self.store.rate.limit or isinstance(blocking, RedisCluster):
            item = await self.store.block_fetch(blocking, block)
        else:
            # No token to take: the pause and hold keys, read by Redis just after it handed
            # the job over, say whether it may start (a Cluster client may split a pipeline,
            # so there the confirm step reads them).
            item, gates_open = await self.store.block_fetch_gated(blocking, block)
        if item is None:
            return Claim(ClaimKind.EMPTY)
        # Otherwise taken without a token: the confirm step takes one, or puts the job back
        # at the front of the queue (throttled, paused or held meanwhile).
        self.owned.take(item)
        try:
            if self.stopping.is_set():
                await until_done(partial(self.store.requeue, item), what="requeue", queue=self.name)
                return Claim(ClaimKind.EMPTY)
            if gates_open:
                return Claim(ClaimKind.JOBS, items=(item,))
            confirm = partial(self.store.confirm, item)
            claim = await until_done(confirm, what="confirm", queue=self.name)
            return Claim(ClaimKind.EMPTY) if claim.kind is ClaimKind.GONE else claim
        finally:
            self.owned.release((item,))
