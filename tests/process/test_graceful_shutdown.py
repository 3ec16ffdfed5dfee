"""Acceptance 4: SIGTERM / SIGINT stop a worker cleanly.

Running jobs get ``worker.shutdown_timeout`` seconds; those that finish are acknowledged, the
rest go back to the wait list exactly as the producer wrote them (no attempt spent) and the
process leaves the consumer registry and exits 0. A second SIGINT exits at once; the jobs it
leaves behind come back when the same identity starts again.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import (
    WorkerProcess,
    queue_table,
    read_records,
    wait_exited,
    wait_for,
    wait_started,
)

QUEUE = "drain"
ME = f"{socket.gethostname()}:w1"
GRACE = 3.0

SpawnWorker = Callable[..., WorkerProcess]


def raw_job(job_id: str, record: str, sleep: float) -> bytes:
    """A producer's job written by hand (spacing, non-ASCII) to check it is never re-encoded."""
    return (
        f'{{"id": "{job_id}",  "record": "{record}", "sleep": {sleep}, "note": "ü → ✓"}}'
    ).encode()


async def llen_at_least(redis: Redis, key: str, n: int) -> bool:
    return await redis.llen(key) >= n


def event(process: WorkerProcess, name: str) -> dict[str, Any]:
    found = [e for e in process.events() if e.get("event") == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_drains_within_grace_and_returns_the_rest_unchanged(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker, signum: signal.Signals
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    process = spawn_worker(queue_table(QUEUE, concurrency=4), {"shutdown_timeout": GRACE})
    await wait_started(process)
    long_jobs = [raw_job(f"long-{i}", record, 60) for i in range(2)]
    short_jobs = [raw_job(f"short-{i}", record, 1) for i in range(2)]
    for item in [*long_jobs, *short_jobs]:
        await redis.lpush(keys.wait, item)
    await wait_for(lambda: llen_at_least(redis, record, 4))
    assert await redis.llen(keys.wait) == 0

    signalled_wall, signalled = time.time(), time.monotonic()
    process.signal(signum)
    status = await wait_exited(process, within=GRACE + 2)
    elapsed = time.monotonic() - signalled

    assert status == 0, process.events()
    assert GRACE - 0.5 <= elapsed <= GRACE + 2, f"exited {elapsed:.1f}s after the signal"
    assert event(process, "worker_stopping")["reason"] == signum.name
    assert event(process, "worker_draining")["in_flight"] == 4
    assert event(process, "worker_stopped")["returned_to_wait"] == 2
    done = await read_records(redis, f"{record}:done")
    assert sorted(d["id"] for d in done) == ["short-0", "short-1"]
    assert all(d["t"] > signalled_wall for d in done), "short jobs finished before the signal"
    # Back as pushed, byte for byte (no envelope, no attempt spent), in the same order:
    # LPUSHed long-0 then long-1, so long-0 sits at the right end, to be fetched first.
    assert await redis.lrange(keys.wait, 0, -1) == long_jobs[::-1]
    assert await redis.exists(keys.processing(ME)) == 0
    assert await redis.zcard(keys.delayed) == 0
    assert await redis.llen(keys.dead) == 0
    assert await redis.zrange(keys.consumers, 0, -1) == []
    assert await redis.exists(keys.heartbeat(ME)) == 0


async def test_second_sigint_exits_at_once_and_restart_recovers(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    queues = queue_table(QUEUE, concurrency=3)
    worker = {"shutdown_timeout": 20.0}
    first = spawn_worker(queues, worker)
    await wait_started(first)
    producer = Producer(redis, prefix=prefix)
    data = {"record": record, "sleep": 60, "sleep_first_run_only": True}
    ids = [await producer.enqueue(QUEUE, {**data, "n": i}, id=f"job-{i}") for i in range(3)]
    await wait_for(lambda: llen_at_least(redis, record, 3))

    first.signal(signal.SIGINT)
    await wait_for(lambda: first.has_event("worker_draining"), within=5)
    assert first.proc.poll() is None, "one SIGINT must drain, not exit"
    forced = time.monotonic()
    first.signal(signal.SIGINT)
    status = await wait_exited(first, within=5)
    elapsed = time.monotonic() - forced

    assert status != 0
    assert elapsed < 1.0, f"second SIGINT took {elapsed:.1f}s to exit"
    assert first.has_event("worker_forced_exit")
    assert not first.has_event("worker_stopped")
    assert await redis.llen(keys.processing(ME)) == 3, "a forced exit leaves its jobs in place"

    second = spawn_worker(queues, worker)
    await wait_for(lambda: llen_at_least(redis, f"{record}:done", 3), within=10)
    done = await read_records(redis, f"{record}:done")
    assert sorted((d["pid"], d["recoveries"], d["data"]["n"]) for d in done) == [
        (second.pid, 1, n) for n in range(3)
    ]
    await wait_for(lambda: _gone(redis, keys.processing(ME)), within=5)
    assert await redis.llen(keys.wait) == 0
    assert await redis.llen(keys.dead) == 0
    assert sorted(d["id"] for d in done) == ids, f"recovered jobs ran as {done}"


async def _gone(redis: Redis, key: str) -> bool:
    return await redis.exists(key) == 0
