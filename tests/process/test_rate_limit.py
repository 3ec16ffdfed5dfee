"""Rate limits shared by every process, "retry after" pauses, and the concurrency cap.

Start times come from the ``scripted`` handler's records (``time.time()`` in each worker
process; every process and Redis run on this machine, so they share one clock).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import signal
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.job import encode_job
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from tests.conftest import WorkerProcess, queue_table, wait_for, wait_started

RATE_LIMIT = 20
RATE_PERIOD = 5.0
RATE_BURST = 5


async def read_records(redis: Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await redis.lrange(key, 0, -1)]


async def stop_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert await asyncio.to_thread(worker.wait, 20) == 0, worker.log_path.read_text()


def max_in_any_window(times: list[float], width: float) -> tuple[int, float]:
    """The most starts in any closed window ``[t, t + width]`` that opens at a start, and
    where that window opens."""
    times = sorted(times)
    best, at = 0, times[0] if times else 0.0
    for i, t in enumerate(times):
        count = bisect.bisect_right(times, t + width) - i
        if count > best:
            best, at = count, t
    return best, at


RUN_S = 30.0  # seconds each fleet runs with a backlog


async def _run_fleet(
    redis: Redis,
    queue_redis: RedisClient,
    prefix: str,
    spawn_worker: Any,
    *,
    burst: int | None,
    label: str,
) -> list[dict[str, Any]]:
    """Three worker processes on one queue with a 200-job backlog for RUN_S seconds; the
    starts their handler recorded. ``burst`` None: the defaults (no rate_burst key)."""
    queue = f"q{label}"
    record = f"{prefix}:starts:{label}"
    producer = Producer(queue_redis, prefix=prefix)
    for i in range(200):
        await producer.enqueue(queue, {"record": record, "n": i})
    settings: dict[str, Any] = {
        "concurrency": 4,
        "rate_limit": RATE_LIMIT,
        "rate_period": RATE_PERIOD,
    }
    if burst is not None:
        settings["rate_burst"] = burst
    queues = queue_table(queue, **settings)
    workers = [spawn_worker(queues, worker={"name": f"{label}{i}"}) for i in range(3)]
    for worker in workers:
        await wait_started(worker)
    await asyncio.sleep(RUN_S)
    await stop_all(workers)
    starts = await read_records(redis, record)
    assert {s["pid"] for s in starts} == {w.pid for w in workers}, "one budget, every process"
    assert max(s["in_flight"] for s in starts) <= 4
    assert await queue_redis.llen(QueueKeys(prefix, queue).wait) > 0, "the backlog ran dry"
    return starts


def steady_rate(times: list[float], skip: int) -> float:
    """Starts per second after the first ``skip`` (the burst a full bucket allows)."""
    steady = sorted(times)[skip:]
    return (len(steady) - 1) / (steady[-1] - steady[0])


@pytest.mark.parametrize("redis_topology", ["single", "cluster"], indirect=True)
async def test_rate_limit_is_a_ceiling_in_every_window_across_processes(
    redis: Redis, queue_redis: RedisClient, prefix: str, spawn_worker: Any
) -> None:
    """rate_limit = 20 per 5 s: no sliding 5 s window holds more than 20 starts (with
    rate_burst = 5: 25), and a backlog runs at ≥ 95% of 4 starts/s, one start every 250 ms.
    The two fleets (defaults, and rate_burst = 5) run side by side on queues of their own."""
    exact, bursty = await asyncio.gather(
        _run_fleet(redis, queue_redis, prefix, spawn_worker, burst=None, label="exact"),
        _run_fleet(redis, queue_redis, prefix, spawn_worker, burst=RATE_BURST, label="burst"),
    )
    limit_per_s = RATE_LIMIT / RATE_PERIOD
    for starts, burst in ((exact, 0), (bursty, RATE_BURST)):
        times = sorted(s["t"] for s in starts)
        # Windows are closed ([t, t + 5 s]) and open at a start: the strictest reading.
        most, opening = max_in_any_window(times, RATE_PERIOD)
        rate = steady_rate(times, 1 + burst)
        span = times[-1] - times[0]
        print(
            f"rate_burst={burst}: {len(times)} starts in {span:.1f}s, most in a 5 s window"
            f" {most} ({100 * most / RATE_LIMIT:.0f}% of the limit), steady"
            f" {rate:.3f}/s ({100 * rate / limit_per_s:.1f}%)"
        )
        assert most <= RATE_LIMIT + burst, f"{most} starts in the 5 s from {opening}"
        assert span >= RUN_S - 5
        assert rate >= 0.95 * limit_per_s, f"{rate:.3f} starts/s"
        # Evenly spread: after the burst, no two starts closer than most of an interval.
        gaps = [b - a for a, b in zip(times[1 + burst :], times[2 + burst :], strict=False)]
        assert min(gaps) > 0.8 * RATE_PERIOD / RATE_LIMIT, min(gaps)
    # The default allows no burst: the first two starts are an interval apart too.
    first_two = sorted(s["t"] for s in exact)[:2]
    assert first_two[1] - first_two[0] > 0.8 * RATE_PERIOD / RATE_LIMIT


async def test_retry_after_pauses_every_process(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    record = f"{prefix}:starts"
    retry_after = 3.0
    producer = Producer(redis, prefix=prefix)
    for i in range(400):
        await producer.enqueue("q", {"record": record, "sleep": 0.1, "n": i})
    queues = queue_table("q", handler="tests.support.handlers:rate_limited_once", concurrency=2)
    workers = [spawn_worker(queues, worker={"name": f"w{i}"}) for i in range(3)]
    for worker in workers:
        await wait_started(worker)

    async def all_busy() -> bool:
        pids = {s["pid"] for s in await read_records(redis, record)}
        return pids == {w.pid for w in workers}

    await wait_for(all_busy, within=15)

    # The limited job goes to the front of the wait list, so it runs next.
    keys = QueueKeys(prefix, "q")
    limited = encode_job(
        {"record": record, "once_key": f"{prefix}:once", "retry_after": retry_after},
        job_id="limited",
        enqueued_at=time.time() * 1000,
    )
    await redis.rpush(keys.wait, limited)
    raw_until = await wait_for(lambda: redis.get(keys.paused_until), within=5, interval=0.005)
    left_at_pause = await redis.llen(keys.wait)
    pause_until = int(raw_until) / 1000  # Redis TIME, same clock as time.time() here
    pause_start = pause_until - retry_after

    async def limited_done() -> bool:
        return any(d["id"] == "limited" for d in await read_records(redis, f"{record}:done"))

    await wait_for(limited_done, within=30, interval=0.1)
    await stop_all(workers)

    assert left_at_pause >= 50, "the backlog must outlast the pause"
    starts = await read_records(redis, record)
    runs = [s for s in starts if s["id"] == "limited"]
    assert [r.get("limited", False) for r in runs] == [True, False]
    assert [r["attempt"] for r in runs] == [1, 1], "a rate-limit retry spends no attempt"
    assert runs[0]["t"] <= pause_start + 0.05
    assert runs[1]["t"] >= pause_until

    # Jobs claimed just before the pause took hold may record their start a little later.
    epsilon = 0.1
    during = [s for s in starts if pause_start + epsilon < s["t"] < pause_until]
    assert during == [], f"{len(during)} starts during the pause"
    after = sorted(s["t"] for s in starts if s["t"] >= pause_until)
    assert after, "nothing ran after the pause"
    assert after[0] - pause_until < 1.5, "work resumed late"
    resumed_by = {s["pid"] for s in starts if s["t"] >= pause_until}
    assert resumed_by == {w.pid for w in workers}


async def test_concurrency_never_exceeds_setting(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    record = f"{prefix}:starts"
    producer = Producer(redis, prefix=prefix)
    for i in range(30):
        await producer.enqueue("q", {"record": record, "sleep": 0.2, "n": i})
    run_worker(make_config(queue_table("q", concurrency=3)))

    async def all_done() -> bool:
        return await redis.llen(f"{record}:done") >= 30

    await wait_for(all_done, within=20, interval=0.05)
    in_flight = [s["in_flight"] for s in await read_records(redis, record)]
    assert len(in_flight) == 30
    assert max(in_flight) == 3


async def test_a_process_frozen_with_its_token_does_not_start_late_into_a_full_window(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    """A start must come when its token says, not later: a process frozen (SIGSTOP) while
    it waits for its token, or between the token and the start, would otherwise start after
    others used the tokens that follow, putting more than the limit into one window. Each
    worker in turn is frozen for 0.35 s, again and again; no 5 s window may hold more than
    20 starts, and the queue still moves."""
    record = f"{prefix}:starts"
    producer = Producer(redis, prefix=prefix)
    for i in range(200):
        await producer.enqueue("q", {"record": record, "n": i})
    queues = queue_table("q", concurrency=4, rate_limit=RATE_LIMIT, rate_period=RATE_PERIOD)
    workers = [spawn_worker(queues, worker={"name": f"f{i}"}) for i in range(3)]
    for worker in workers:
        await wait_started(worker)
    until = time.monotonic() + 20.0
    turn = 0
    while time.monotonic() < until:
        frozen = workers[turn % 3]
        turn += 1
        frozen.signal(signal.SIGSTOP)
        await asyncio.sleep(0.35 + 0.1 * (turn % 4) / 4)
        frozen.signal(signal.SIGCONT)
        await asyncio.sleep(0.25 + 0.2 * (turn % 5) / 5)
    await stop_all(workers)
    times = sorted(s["t"] for s in await read_records(redis, record))
    most, opening = max_in_any_window(times, RATE_PERIOD)
    print(f"{len(times)} starts, {turn} freezes, most in a 5 s window {most}")
    assert most <= RATE_LIMIT, f"{most} starts in the 5 s from {opening}"
    assert len(times) >= 0.8 * 20.0 * RATE_LIMIT / RATE_PERIOD, len(times)
    # The freezes did catch starts late, and those took new tokens.
    assert any('"start_too_late"' in w.log_path.read_text() for w in workers)
