"""One run of worker processes through a failover of the master serving their queue, for
the Cluster and Sentinel tests: what is pushed, what ran, and how long each part took.

Two workers (concurrency 4 each) run ``JOBS`` jobs of the ``scripted`` handler (0.1 s
each), pushed with ``WAIT 1``, while a producer goes on pushing one more every 50 ms (each
with the same id again until a replica confirmed it). Once ``BUSY_AT`` jobs are done (or,
idle, once the backlog is done and fetches are blocked on the master), the test's
:class:`Failover` fails the master, waits for the promotion, and restores a replica; the
producer goes on for ``PUSHING_AFTER`` seconds more. Then every acknowledged push must
complete.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from alchemy.errors import NotReplicatedError
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from tests.conftest import WorkerProcess, queue_table, read_records, wait_for

JOBS = 600
BUSY_AT = 150  # jobs done when a busy failover begins
PUSHING_AFTER = 2.0  # seconds the producer goes on after the promotion
RESUME_WITHIN = 5.0  # seconds after the promotion: issue 10's bound for Sentinel


@dataclass
class Failover:
    """What a test does to Redis. ``fail`` and ``wait_promoted`` (seconds from the failure
    to the promotion) run in a thread; ``restore`` (bring a replica back) too."""

    fail: Callable[[], None]
    wait_promoted: Callable[[], float]
    restore: Callable[[], None] = lambda: None
    ready_to_fail: Callable[[], Awaitable[bool]] | None = None  # idle runs: fetches blocked


@dataclass
class FailoverRun:
    label: str
    workers: list[WorkerProcess]
    acknowledged: list[str]
    starts: list[dict[str, Any]]
    done: Counter[str]
    failed_at: float
    promoted_in: float
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promoted_at(self) -> float:
        return self.failed_at + self.promoted_in

    @property
    def resumed_after_promotion(self) -> float:
        """From the promotion to the first job started after the failure."""
        first = min(s["t"] for s in self.starts if s["t"] > self.failed_at + 0.05)
        return float(first - self.promoted_at)

    @property
    def lost(self) -> set[str]:
        return set(self.acknowledged) - set(self.done)

    @property
    def ran_twice(self) -> dict[str, int]:
        return {job_id: n for job_id, n in self.done.items() if n > 1}

    def summary(self) -> str:
        failing = Counter(
            e.get("step") for e in self.events if e.get("event") == "redis_step_failing"
        )
        return (
            f"{self.label}: promoted {self.promoted_in:.2f}s after the failure; work resumed"
            f" {self.resumed_after_promotion:+.2f}s after the promotion;"
            f" {len(self.acknowledged)} acknowledged pushes, {len(self.lost)} lost,"
            f" {len(self.ran_twice)} ran twice; failing steps {dict(failing)}"
        )

    def assert_nothing_lost(self) -> None:
        print(self.summary())
        assert all(w.proc.poll() is None for w in self.workers), "a worker exited"
        assert self.lost == set(), "an acknowledged job was lost"
        assert self.resumed_after_promotion <= RESUME_WITHIN
        assert not [e for e in self.events if e.get("event") == "background_task_ended"]
        refused = [e for e in self.events if e.get("level") == "error"]
        assert refused == [], f"steps failed for a reason that is not the failover: {refused}"


async def push_until_replicated(producer: Producer, queue: str, job_id: str, data: Any) -> None:
    """Push until one replica confirmed it: each try with the same id."""
    while True:
        try:
            await producer.enqueue(queue, data, id=job_id, replicas=1, replication_timeout=0.5)
            return
        except (NotReplicatedError, redis_errors.RedisError):
            await asyncio.sleep(0.2)


async def keep_pushing(
    producer: Producer, queue: str, data: dict[str, Any], acked: list[str], enough: asyncio.Event
) -> None:
    """A job every 50 ms (each pushed until a replica has it) until ``enough`` is set."""
    n = 0
    while not enough.is_set():
        job_id = f"late-{n}"
        await push_until_replicated(producer, queue, job_id, data)
        acked.append(job_id)
        n += 1
        await asyncio.sleep(0.05)


async def run_through_failover(
    *,
    label: str,
    redis: Redis,
    client: RedisClient,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
    queue: str,
    redis_settings: dict[str, Any],
    failover: Failover,
    busy: bool,
) -> FailoverRun:
    record = f"{prefix}:rec"
    data = {"record": record, "sleep": 0.1}
    producer = Producer(client, prefix=prefix)
    acked = [f"job-{n}" for n in range(JOBS)]
    for job_id in acked:
        await push_until_replicated(producer, queue, job_id, data)
    workers = [
        spawn_worker(
            queue_table(queue, concurrency=4),
            {"name": f"w{n}", "reconcile_interval": 3.5},
            redis={**redis_settings, "socket_timeout": 2.0},
        )
        for n in range(2)
    ]
    enough = asyncio.Event()
    late = asyncio.create_task(keep_pushing(producer, queue, data, acked, enough))
    await wait_for(lambda: _done_at_least(redis, record, BUSY_AT if busy else JOBS), within=30)
    if failover.ready_to_fail is not None:
        await wait_for(failover.ready_to_fail, within=10)
    failed_at = time.time()
    await asyncio.to_thread(failover.fail)
    promoted_in = await asyncio.to_thread(failover.wait_promoted)
    await asyncio.to_thread(failover.restore)
    await asyncio.sleep(PUSHING_AFTER)
    enough.set()
    await late
    keys = QueueKeys(prefix, queue)
    try:
        await wait_for(lambda: _all_done(redis, record, acked), within=60, interval=0.2)
    except AssertionError as exc:
        where = await _whereabouts(redis, client, keys, record, acked)
        said = [
            Counter(e.get("event") for e in w.events() if e.get("level") != "info") for w in workers
        ]
        raise AssertionError(f"{exc}: acknowledged jobs not done: {where}; logs: {said}") from None
    for member in [m.decode() for m in await client.zrange(keys.consumers, 0, -1)]:
        await wait_for(lambda m=member: _empty(client, keys.processing(m)), within=15)
    assert await client.llen(keys.wait) == 0
    assert await client.lrange(keys.dead, 0, -1) == []
    return FailoverRun(
        label=label,
        workers=workers,
        acknowledged=acked,
        starts=await read_records(redis, record),
        done=await done_ids(redis, record),
        failed_at=failed_at,
        promoted_in=promoted_in,
        events=[e for w in workers for e in w.events()],
    )


async def done_ids(redis: Redis, record: str) -> Counter[str]:
    return Counter(r["id"] for r in await read_records(redis, f"{record}:done"))


async def _done_at_least(redis: Redis, record: str, n: int) -> bool:
    return int(await redis.llen(f"{record}:done")) >= n


async def _all_done(redis: Redis, record: str, ids: list[str]) -> bool:
    return set(await done_ids(redis, record)) >= set(ids)


async def _whereabouts(
    redis: Redis, client: RedisClient, keys: QueueKeys, record: str, acked: list[str]
) -> dict[str, Any]:
    """Where the acknowledged jobs that never finished are: the lists holding them and
    whether they ever started (for a failure seen once in a full suite and never alone)."""
    missing = set(acked) - set(await done_ids(redis, record))
    held: dict[str, list[bytes]] = {
        "wait": await client.lrange(keys.wait, 0, -1),
        "delayed": await client.zrange(keys.delayed, 0, -1),
        "dead": await client.lrange(keys.dead, 0, -1),
    }
    for member in [m.decode() for m in await client.zrange(keys.consumers, 0, -1)]:
        held[f"processing:{member}"] = await client.lrange(keys.processing(member), 0, -1)
    found = {
        name: ids
        for name, items in held.items()
        if (ids := [i for i in map(_id_of, items) if i in missing])
    }
    started = {r["id"] for r in await read_records(redis, record)}
    return {
        "missing": sorted(missing),
        "found": found,
        "started_but_not_done": sorted(missing & started),
    }


def _id_of(raw: bytes) -> str:
    """The job id of a list item: a producer's job, an envelope (a retried or recovered
    job: its id in the bookkeeping, else in the job it carries) or a dead-letter entry."""
    try:
        obj = orjson.loads(raw)
        if "_alchemy" in obj:
            return str(obj["_alchemy"].get("id") or orjson.loads(obj["job"]).get("id"))
        return str(obj.get("id"))
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return "?"


async def _empty(client: RedisClient, key: str) -> bool:
    return int(await client.llen(key)) == 0
