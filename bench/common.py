"""What both sides of the benchmark share: filling a list, timing its drain, cleaning up."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Final

from redis.asyncio import Redis

from alchemy.queue.producer import Producer

PREFILL_BATCH: Final = 1000
POLL_INTERVAL: Final = 0.002  # seconds between two looks at the lists while timing


def drain_item(n: int) -> bytes:
    """A producer job as the wire protocol allows it at its smallest: an id and no data.
    Without ``enqueued_at`` it logs no pickup time, which keeps it out of the latency run."""
    return b'{"id":"drain-%d"}' % n


async def prefill(redis: Redis, key: str, count: int) -> None:
    """LPUSH ``count`` jobs in pipelined batches."""
    for start in range(0, count, PREFILL_BATCH):
        items = [drain_item(n) for n in range(start, min(count, start + PREFILL_BATCH))]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lpush(key, *items)
            await pipe.execute()


async def time_drain(
    redis: Redis, wait: str, processing: str, total: int, *, within: float = 300.0
) -> float:
    """Seconds from the moment the first job leaves ``wait`` until ``wait`` and
    ``processing`` are both empty, looking every couple of milliseconds.

    Starting at the first pickup rather than at the go signal keeps the consumer's start-up
    (process launch, or the engine noticing a resumed queue) out of the figure, on both
    sides alike."""
    deadline = time.monotonic() + within
    while await redis.llen(wait) >= total:
        _check(deadline, "nothing was taken from the wait list")
        await asyncio.sleep(POLL_INTERVAL / 2)
    started = time.perf_counter()
    await wait_empty(redis, wait, processing, within=deadline - time.monotonic())
    return time.perf_counter() - started


async def wait_empty(redis: Redis, wait: str, processing: str, *, within: float) -> None:
    """Return once ``wait`` and ``processing`` are both empty."""
    await wait_settled(redis, wait, processing, 0, within=within)


async def wait_settled(
    redis: Redis, wait: str, processing: str, count: int, *, within: float = 10.0
) -> None:
    """Return once ``wait`` holds ``count`` items and ``processing`` is empty."""
    deadline = time.monotonic() + within
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(wait)
            pipe.llen(processing)
            waiting, running = await pipe.execute()
        if waiting == count and running == 0:
            return
        _check(deadline, f"not settled: {waiting} waiting, {running} processing")
        await asyncio.sleep(POLL_INTERVAL)


def _check(deadline: float, problem: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(problem)


async def delete_prefix(redis: Redis, prefix: str) -> int:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await redis.delete(*keys)
    return len(keys)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


async def feed(redis: Redis, prefix: str, queue: str, rate: float, seconds: float) -> int:
    """Enqueue ``rate`` jobs/s for ``seconds`` on a fixed schedule with alchemy's Producer
    (which stamps ``enqueued_at``); ids ``lat-N``. Returns how many."""
    producer = Producer(redis, prefix=prefix)
    count = round(rate * seconds)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for n in range(count):
        delay = began + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await producer.enqueue(queue, {}, id=f"lat-{n}")
    return count
