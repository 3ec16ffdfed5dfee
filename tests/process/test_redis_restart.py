"""Acceptance 7: a worker rides out a Redis restart.

The worker talks to a private redis-server (AOF, fsync always) that is stopped for a few
seconds and started again on the same port and data directory, in the middle of a run. The
handler records into the main test Redis, so its records outlive the outage. The worker must
stay up, log that Redis was away, and finish every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import Secret
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import WorkerProcess, queue_table, read_records, wait_for, wait_started
from tests.fakes.redis_server import PrivateRedis

QUEUE = "outage"
HOST = socket.gethostname()
JOBS = 200
DOWN_FOR = 3.0


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis-data"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()


@pytest.fixture
async def private(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    """A client of the private server (its keys go away with its data directory)."""
    client = Redis.from_url(private_redis.url)
    await private_redis.wait_ready(client)
    yield client
    await client.aclose()


@pytest.mark.parametrize("names", [["w1"], ["w1", "w2"]], ids=["one-worker", "two-workers"])
async def test_workers_survive_a_redis_restart(
    redis: Redis,
    prefix: str,
    spawn_worker: Callable[..., WorkerProcess],
    private_redis: PrivateRedis,
    private: Redis,
    names: list[str],
) -> None:
    """The outage (3 s) outlasts the heartbeat TTL (2 s): with two workers, neither may
    take the other for dead and recover its jobs while they still run."""
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    identities = [f"{HOST}:{name}" for name in names]
    producer = Producer(private, prefix=prefix)
    data = {"record": record, "sleep": 0.1 * len(names)}
    ids = [await producer.enqueue(QUEUE, {**data, "n": i}, id=f"job-{i}") for i in range(JOBS)]
    queues = queue_table(QUEUE, concurrency=4)
    processes = [
        spawn_worker(queues, {"name": name}, redis={"url": private_redis.url}) for name in names
    ]
    for process in processes:
        await wait_started(process)
    # redis.url came through the config and the prefix stayed: the queue lives in the
    # private server only.
    assert sorted(await private.zrange(keys.consumers, 0, -1)) == [i.encode() for i in identities]
    assert await redis.exists(keys.wait, keys.consumers) == 0

    await wait_for(lambda: _count_at_least(redis, f"{record}:done", 30), within=10)
    private_redis.stop()
    stopped_at = time.monotonic()
    done_before_outage = await redis.llen(f"{record}:done")
    await asyncio.sleep(DOWN_FOR)  # the outage itself, not an assertion
    assert all(p.proc.poll() is None for p in processes), "a worker died while Redis was down"
    private_redis.start()
    await private_redis.wait_ready(private)
    assert await private.llen(keys.wait) > 0, "the AOF lost the queue"

    await wait_for(lambda: _all_done(redis, f"{record}:done", ids), within=25)
    finished_in = time.monotonic() - stopped_at
    for identity in identities:
        await wait_for(lambda identity=identity: _gone(private, keys.processing(identity)))

    assert all(p.proc.poll() is None for p in processes), "a worker died after Redis came back"
    assert await private.llen(keys.wait) == 0
    assert await private.zcard(keys.delayed) == 0
    assert await private.lrange(keys.dead, 0, -1) == []
    # Each failing step is logged once when its episode starts and once when it ends: a
    # reconcile pass that failed ends its episode at its next pass (reconcile_interval, 7 s),
    # which may come after the last job.
    await wait_for(lambda: _episodes_ended(processes), within=15, interval=0.2)
    events = [e for p in processes for e in p.events()]
    counts = Counter(e.get("event") for e in events)
    failing = [e for e in events if e.get("event") == "redis_step_failing"]
    assert "fetch" in {e.get("step") for e in failing}, counts
    assert counts["redis_step_recovered"] >= len(failing) > 0, counts
    assert {e["level"] for e in events if e.get("event") in _OUTAGE_EVENTS} == {"warning"}
    assert counts["recovered_dead_worker"] == 0, "a live worker was taken for dead"
    done = await read_records(redis, f"{record}:done")
    runs = Counter(d["id"] for d in done)
    duplicates = {job_id: n for job_id, n in runs.items() if n > 1}
    print(
        f"{len(names)} worker(s): done before outage {done_before_outage}, all done "
        f"{finished_in:.1f}s after the stop, duplicates {duplicates}, events {dict(counts)}"
    )
    assert set(runs) == set(ids)
    assert duplicates == {}, "a job ran twice although no process crashed"
    assert {d["recoveries"] for d in done} == {0}


_OUTAGE_EVENTS = frozenset({"redis_step_failing"})


def _episodes_ended(processes: list[WorkerProcess]) -> bool:
    events = Counter(e.get("event") for p in processes for e in p.events())
    return events["redis_step_recovered"] >= events["redis_step_failing"]


async def _count_at_least(redis: Redis, key: str, n: int) -> bool:
    return await redis.llen(key) >= n


async def _all_done(redis: Redis, key: str, ids: list[str]) -> bool:
    done = {r["id"] for r in await read_records(redis, key)}
    return done >= set(ids)


async def _gone(client: Redis, key: str) -> bool:
    with contextlib.suppress(Exception):
        return await client.exists(key) == 0
    return False


async def test_consumers_take_jobs_within_2s_of_a_long_outage_ending(
    private_redis: PrivateRedis,  # first: it stops after the worker
    private: Redis,
    redis: Redis,
    prefix: str,
    make_config: Any,
    run_worker: Any,
) -> None:
    """However long Redis was away (8 s here: the backoff of other steps reaches 5 s), a
    consumer looks again within 2 s, so a job pushed as Redis comes back starts at once."""
    config = make_config(queue_table(QUEUE))
    config = dataclasses.replace(
        config, redis=dataclasses.replace(config.redis, url=Secret(private_redis.url))
    )
    run_worker(config)
    record = f"{prefix}:rec"
    producer = Producer(private, prefix=prefix)
    await producer.enqueue(QUEUE, {"record": record}, id="before")
    await wait_for(lambda: _count_at_least(redis, f"{record}:done", 1), within=10)
    private_redis.stop()
    await asyncio.sleep(8.0)  # the outage itself, not an assertion
    private_redis.start()
    await private_redis.wait_ready(private)
    back = time.monotonic()
    await producer.enqueue(QUEUE, {"record": record}, id="after")
    await wait_for(lambda: _count_at_least(redis, f"{record}:done", 2), within=10)
    waited = time.monotonic() - back
    print(f"a job pushed as Redis came back ran {waited:.2f}s later")
    assert waited < 2.5
