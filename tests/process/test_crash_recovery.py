"""Acceptance 2: a worker killed with SIGKILL loses nothing.

Its in-flight jobs come back when the same identity starts again (at once), or when another
live process sees its heartbeat expire (within heartbeat TTL + one sweep). A job that kills
its process every time is dead-lettered as poison after ``max_recoveries``.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import WorkerConfig
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from tests.conftest import (
    WorkerProcess,
    queue_table,
    read_records,
    wait_exited,
    wait_for,
    wait_started,
)

QUEUE = "crash"
HOST = socket.gethostname()
pytestmark = pytest.mark.parametrize("redis_topology", ["single", "cluster"], indirect=True)

SpawnWorker = Callable[..., WorkerProcess]


def identity(name: str) -> str:
    return f"{HOST}:{name}"


async def llen_at_least(redis: RedisClient, key: str, n: int) -> bool:
    return await redis.llen(key) >= n


async def is_empty(redis: RedisClient, key: str) -> bool:
    return await redis.exists(key) == 0


async def enqueue_sleepers(redis: RedisClient, prefix: str, record: str, n: int) -> list[str]:
    """``n`` jobs that sleep 30 s on their first run and finish at once when recovered."""
    producer = Producer(redis, prefix=prefix)
    data: dict[str, Any] = {"record": record, "sleep": 30, "sleep_first_run_only": True}
    return [await producer.enqueue(QUEUE, {**data, "n": i}, id=f"job-{i}") for i in range(n)]


async def assert_queue_drained(redis: RedisClient, keys: QueueKeys, *identities: str) -> None:
    """Nothing waiting, delayed, dead or held by any of ``identities``."""
    for name in identities:
        await wait_for(lambda name=name: is_empty(redis, keys.processing(name)), within=5)
    assert await redis.llen(keys.wait) == 0
    assert await redis.zcard(keys.delayed) == 0
    assert await redis.lrange(keys.dead, 0, -1) == []


def events_named(process: WorkerProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in process.events() if e.get("event") == name]


async def test_kill9_then_same_identity_recovers_its_jobs_at_once(
    redis: Redis, queue_redis: RedisClient, prefix: str, spawn_worker: SpawnWorker
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    me = identity("w1")
    # A long heartbeat TTL: finishing well inside it proves the restart did not wait for
    # its own old heartbeat to expire.
    worker = {"heartbeat_interval": 2.0, "heartbeat_ttl": 10.0}
    queues = queue_table(QUEUE, concurrency=3)
    first = spawn_worker(queues, worker)
    await wait_started(first)
    ids = await enqueue_sleepers(queue_redis, prefix, record, 3)
    await wait_for(lambda: llen_at_least(redis, record, 3))
    assert await queue_redis.llen(keys.processing(me)) == 3

    killed_at = time.monotonic()
    first.kill()  # SIGKILL, then reaped (as systemd would)
    assert first.proc.returncode == -signal.SIGKILL
    second = spawn_worker(queues, worker)
    await wait_for(lambda: llen_at_least(redis, f"{record}:done", 3), within=10)
    elapsed = time.monotonic() - killed_at

    assert elapsed < 5.0, f"own leftovers took {elapsed:.1f}s (heartbeat TTL 10s)"
    recovered = events_named(second, "recovered_own_jobs")
    assert [(e["queue"], e["recovered"], e["poisoned"]) for e in recovered] == [(QUEUE, 3, 0)]
    starts = await read_records(redis, record)
    assert sorted((s["recoveries"], s["pid"], s["data"]["n"]) for s in starts) == [
        *((0, first.pid, n) for n in range(3)),
        *((1, second.pid, n) for n in range(3)),
    ]
    done = await read_records(redis, f"{record}:done")
    assert sorted((d["recoveries"], d["attempt"], d["data"]["n"]) for d in done) == [
        (1, 1, n) for n in range(3)
    ]
    await assert_queue_drained(queue_redis, keys, me)
    # The job id survives the recovery envelope.
    assert sorted(d["id"] for d in done) == ids, f"recovered jobs ran as {done}"


@pytest.mark.parametrize(
    ("timings", "bound"),
    [
        pytest.param({}, 2.0 + 0.5 + 3.0, id="fixture-timings"),
        pytest.param(
            {
                name: getattr(WorkerConfig(), name)
                for name in (
                    "heartbeat_interval",
                    "heartbeat_ttl",
                    "recovery_interval",
                    "reconcile_interval",
                )
            },
            5.0,  # issue 12: back within 5 s with the shipped timings
            id="default-timings",
        ),
    ],
)
async def test_kill9_another_process_recovers_after_heartbeat_expires(
    redis: Redis,
    queue_redis: RedisClient,
    prefix: str,
    spawn_worker: SpawnWorker,
    timings: dict[str, float],
    bound: float,
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    victim_id, rescuer_id = identity("w1"), identity("w2")
    queues = queue_table(QUEUE, concurrency=3)
    victim = spawn_worker(queues, {**timings, "name": "w1"})
    await wait_started(victim)
    ids = await enqueue_sleepers(queue_redis, prefix, record, 3)
    await wait_for(lambda: llen_at_least(redis, record, 3))
    rescuer = spawn_worker(queues, {**timings, "name": "w2"})
    await wait_started(rescuer)
    assert set(await queue_redis.zrange(keys.consumers, 0, -1)) == {
        victim_id.encode(),
        rescuer_id.encode(),
    }

    killed_at = time.monotonic()
    victim.kill()
    await wait_for(lambda: llen_at_least(redis, f"{record}:done", 3), within=bound + 5)
    elapsed = time.monotonic() - killed_at
    print(f"recovered {elapsed:.2f}s after SIGKILL (heartbeat {timings}, bound {bound}s)")

    ttl = timings.get("heartbeat_ttl", 2.0)
    interval = timings.get("heartbeat_interval", 0.5)
    assert elapsed <= bound, f"recovery took {elapsed:.1f}s, bound {bound:.1f}s"
    # Not before the victim's last heartbeat could have expired.
    assert elapsed >= ttl - interval - 0.1, f"swept after {elapsed:.1f}s, heartbeat TTL {ttl}s"
    swept = events_named(rescuer, "recovered_dead_worker")
    assert [(e["dead_worker"], e["recovered"], e["poisoned"]) for e in swept] == [(victim_id, 3, 0)]
    done = await read_records(redis, f"{record}:done")
    assert sorted((d["pid"], d["recoveries"], d["data"]["n"]) for d in done) == [
        (rescuer.pid, 1, n) for n in range(3)
    ]
    await assert_queue_drained(queue_redis, keys, victim_id, rescuer_id)
    assert await queue_redis.zrange(keys.consumers, 0, -1) == [rescuer_id.encode()]
    assert await queue_redis.exists(keys.heartbeat(victim_id)) == 0
    assert rescuer.proc.poll() is None
    assert sorted(d["id"] for d in done) == ids, f"recovered jobs ran as {done}"


async def test_poison_job_is_dead_lettered_after_max_recoveries(
    redis: Redis, queue_redis: RedisClient, prefix: str, spawn_worker: SpawnWorker
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    me = identity("w1")
    queues = queue_table(QUEUE, concurrency=1)
    worker = {"max_recoveries": 2}
    # Written by hand (spaces, non-ASCII, a slash) to check it comes back byte for byte.
    poison = (
        f'{{"id": "poison-1", "record": "{record}", "crash_while_recoveries_below": 99, '
        '"note": "café / naïve ☃ \\u00e9"}'
    ).encode()
    await queue_redis.lpush(keys.wait, poison)
    producer = Producer(queue_redis, prefix=prefix)
    others = [
        await producer.enqueue(QUEUE, {"record": record, "n": i}, id=f"ok-{i}") for i in range(3)
    ]

    # Restart=on-failure: the same identity comes back each time the poison kills it.
    crashed: list[WorkerProcess] = []
    for run in range(3):
        process = spawn_worker(queues, worker)
        status = await wait_exited(process, within=20)
        assert status == -signal.SIGKILL, f"run {run}: exit {status}: {process.events()}"
        crashed.append(process)
        assert await queue_redis.llen(keys.dead) == 0

    survivor = spawn_worker(queues, worker)
    await wait_started(survivor)
    await wait_for(lambda: llen_at_least(redis, f"{record}:done", 3), within=10)
    late = await producer.enqueue(QUEUE, {"record": record, "n": 3}, id="ok-late")
    await wait_for(lambda: llen_at_least(redis, f"{record}:done", 4), within=10)

    assert survivor.proc.poll() is None, "the worker died after the poison was dead-lettered"
    starts = await read_records(redis, record)
    poison_runs = [s for s in starts if "crash_while_recoveries_below" in s["data"]]
    assert [(s["recoveries"], s["pid"]) for s in poison_runs] == [
        (n, p.pid) for n, p in enumerate(crashed)
    ]
    recovered = events_named(survivor, "recovered_own_jobs")
    assert [(e["recovered"], e["poisoned"]) for e in recovered] == [(0, 1)]
    dead = await queue_redis.lrange(keys.dead, 0, -1)
    assert len(dead) == 1
    entry: dict[str, Any] = json.loads(dead[0])
    assert entry["reason"] == "poison"
    assert entry["recoveries"] == 3
    assert entry["attempts"] == 1
    assert entry["queue"] == QUEUE
    assert entry["error"]["type"] == "ProcessDied"
    assert entry["job"].encode() == poison
    done = await read_records(redis, f"{record}:done")
    assert sorted((d["id"], d["recoveries"], d["pid"]) for d in done) == [
        (job_id, 0, survivor.pid) for job_id in sorted([*others, late])
    ]
    await assert_queue_drained_except_dead(queue_redis, keys, me)
    assert entry["id"] == "poison-1", f"dead entry lost the job id: {entry}"


async def assert_queue_drained_except_dead(redis: RedisClient, keys: QueueKeys, me: str) -> None:
    await wait_for(lambda: is_empty(redis, keys.processing(me)), within=5)
    assert await redis.llen(keys.wait) == 0
    assert await redis.zcard(keys.delayed) == 0


async def test_a_job_without_an_id_keeps_its_id_through_recovery_and_retry(
    redis: Redis, queue_redis: RedisClient, prefix: str, spawn_worker: SpawnWorker
) -> None:
    """Pushed without an id, a job is named by its bytes: the id its handler sees is the
    same after its process was killed (a recovery) and after a failed attempt (a retry)."""
    record = f"{prefix}:rec"
    keys = QueueKeys(prefix, QUEUE)
    raw = json.dumps({"record": record, "crash_while_recoveries_below": 1, "fail_until_attempt": 2})
    await queue_redis.lpush(keys.wait, raw)
    queues = queue_table(QUEUE, backoff_initial=0.1, backoff_jitter=0.0)
    first = spawn_worker(queues, worker={"name": "idless"})
    assert await wait_exited(first, within=20) == -signal.SIGKILL  # the handler killed it
    second = spawn_worker(queues, worker={"name": "idless"})
    await wait_started(second)
    await wait_for(lambda: redis.llen(f"{record}:done"), within=15)
    runs = await read_records(redis, record)
    assert [(r["recoveries"], r["attempt"]) for r in runs] == [(0, 1), (1, 1), (1, 2)]
    ids = {r["id"] for r in runs}
    assert len(ids) == 1
    [job_id] = ids
    assert job_id.startswith("sha256-")
