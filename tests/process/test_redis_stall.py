"""A Redis that stalls without an error never makes live processes recover each other's jobs
(issue 12, goal 5).

With the shipped timings (heartbeat every 0.5 s, TTL 3 s) a stall of 4 s expires every
heartbeat, yet is shorter than ``socket_timeout`` (5 s) and than the server's
``busy-reply-threshold`` (5 s): every client just waits, nobody gets an error. When the
server answers again each process renews its heartbeat within milliseconds, but a sweep
that looked in between would see the others' heartbeats gone. The sweepers must take the
stall for what it is (their own heartbeat waited seconds for its answer) and wait, as they
do after an outage.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import WorkerConfig
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, read_records, wait_for, wait_started
from tests.fakes.redis_server import PrivateRedis

QUEUE = "stall"
STALL_S = 4.0
STALLS = 3
JOBS = 4  # two on each process


def shipped_timings() -> dict[str, float]:
    defaults = WorkerConfig()
    names = ("heartbeat_interval", "heartbeat_ttl", "recovery_interval", "reconcile_interval")
    return {name: getattr(defaults, name) for name in names}


@pytest.fixture
def stalling_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A server of our own, with the default busy-reply-threshold (5 s)."""
    directory = tmp_path / "redis-data"
    directory.mkdir()
    server = PrivateRedis(directory, persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin(stalling_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(stalling_redis.url)
    await stalling_redis.wait_ready(client)
    yield client
    await client.aclose()


async def stall(server: PrivateRedis, seconds: float) -> None:
    """A script that loops for ``seconds``: the server answers nobody meanwhile, and (under
    the busy-reply threshold) tells nobody why."""
    client = Redis.from_url(server.url, socket_timeout=seconds + 10)
    script = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stop = start + tonumber(ARGV[1])
repeat
  t = redis.call('TIME')
until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
return 1
"""
    try:
        await client.eval(script, 0, int(seconds * 1_000_000))
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
async def test_a_stall_shorter_than_the_socket_timeout_is_not_taken_for_deaths(
    redis: Redis,
    prefix: str,
    spawn_worker: Any,
    stalling_redis: PrivateRedis,
    admin: Redis,
) -> None:
    timings = shipped_timings()
    assert timings["heartbeat_ttl"] - timings["heartbeat_interval"] < STALL_S < 5.0
    record = f"{prefix}:rec"
    workers = [
        spawn_worker(
            queue_table(QUEUE, concurrency=2),
            worker={**timings, "name": name},
            redis={"url": stalling_redis.url},
        )
        for name in ("s1", "s2")
    ]
    for worker in workers:
        await wait_started(worker)
    await asyncio.sleep(timings["heartbeat_ttl"] + 0.5)  # both may sweep now
    producer = Producer(admin, prefix=prefix)
    sleep = STALLS * (STALL_S + 2.0) + 2.0
    for n in range(JOBS):
        await producer.enqueue(QUEUE, {"record": record, "sleep": sleep}, id=f"s-{n}")

    async def all_started() -> bool:
        return int(await redis.llen(record)) >= JOBS

    await wait_for(all_started, within=10)
    for _ in range(STALLS):
        await stall(stalling_redis, STALL_S)
        await asyncio.sleep(2.0)  # the sweeps that follow a stall

    async def all_done() -> bool:
        return int(await redis.llen(f"{record}:done")) >= JOBS

    await wait_for(all_done, within=sleep + 10)
    starts = Counter(r["id"] for r in await read_records(redis, record))
    assert starts == {f"s-{n}": 1 for n in range(JOBS)}, f"a job ran twice: {starts}"
    for worker in workers:
        events = worker.events()
        swept = [e for e in events if e.get("event") == "recovered_dead_worker"]
        assert swept == [], f"a live process's jobs were recovered: {swept}"
        assert not [e for e in events if e.get("event") == "redis_step_failing"], (
            "the stall was meant to raise no error"
        )
