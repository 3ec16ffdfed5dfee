"""Redis answering "wait" does not stop acknowledgements (issue 9, item 3).

A worker runs jobs against a private redis-server while that server refuses writes after a
failed snapshot (MISCONF), runs a long script (BUSY) and is paused by CLIENT PAUSE. Every job
must complete and be acknowledged exactly once, none may run twice, and SIGTERM afterwards
must exit 0. And a background task that ends anyway stops the process with status 1.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, read_records, wait_exited, wait_for, wait_started
from tests.fakes.redis_server import PrivateRedis

QUEUE = "faults"
JOBS = 400


@pytest.fixture
def fragile_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """No persistence, but a save rule, so a failed BGSAVE makes it refuse writes."""
    directory = tmp_path / "redis-data"
    directory.mkdir()
    server = PrivateRedis(
        directory,
        persistent=False,
        extra=["--busy-reply-threshold", "100"],
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin(fragile_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(fragile_redis.url)
    await fragile_redis.wait_ready(client)
    yield client
    await client.aclose()


async def refuse_writes_for(admin: Redis, server: PrivateRedis, seconds: float) -> None:
    """MISCONF: a snapshot fails (its directory is gone) with stop-writes-on-bgsave-error."""
    await admin.config_set("save", "3600 1")
    await admin.config_set("stop-writes-on-bgsave-error", "yes")
    shutil.rmtree(server.directory)
    await admin.bgsave()

    async def refusing() -> bool:
        try:
            await admin.set("misconf-probe", "1")
        except redis_errors.ResponseError as exc:
            return str(exc).startswith("MISCONF")
        return False

    await wait_for(refusing, within=10, interval=0.05)
    await asyncio.sleep(seconds)
    await admin.config_set("stop-writes-on-bgsave-error", "no")


async def busy_for(server: PrivateRedis, seconds: float) -> None:
    """BUSY: a read-only script loops for ``seconds`` (others get BUSY after 100 ms)."""
    client = Redis.from_url(server.url, socket_timeout=seconds + 10)
    script = """
local start = tonumber(redis.call('TIME')[1])
while tonumber(redis.call('TIME')[1]) < start + tonumber(ARGV[1]) do end
return 1
"""
    try:
        await client.eval(script, 0, int(seconds))
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
async def test_misconf_busy_and_client_pause_lose_no_acknowledgement(
    redis: Redis,
    prefix: str,
    spawn_worker: Any,
    fragile_redis: PrivateRedis,
    admin: Redis,
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    producer = Producer(admin, prefix=prefix)
    for n in range(JOBS):
        await producer.enqueue(QUEUE, {"record": record, "sleep": 0.05}, id=f"j{n}")
    worker = spawn_worker(
        queue_table(QUEUE, concurrency=4),
        worker={"name": "faults"},
        redis={"url": fragile_redis.url},
    )
    await wait_started(worker)

    async def done_at_least(n: int) -> bool:
        return await redis.llen(f"{record}:done") >= n

    await wait_for(lambda: done_at_least(20), within=20)
    await refuse_writes_for(admin, fragile_redis, 4.0)
    await wait_for(lambda: done_at_least(150), within=30)
    await busy_for(fragile_redis, 3.0)
    await wait_for(lambda: done_at_least(250), within=30)
    await admin.client_pause(4000, all=True)
    await asyncio.sleep(4.5)
    await wait_for(lambda: done_at_least(JOBS), within=40, interval=0.1)

    async def settled() -> bool:
        counts = [
            await admin.llen(keys.wait),
            await admin.llen(keys.processing(f"{worker_host(worker)}:faults")),
            await admin.zcard(keys.delayed),
        ]
        return counts == [0, 0, 0]

    await wait_for(settled, within=20)
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await wait_exited(worker, within=20) == 0, worker.log_path.read_text()[-3000:]
    stopped_in = time.monotonic() - sent

    starts = Counter(r["id"] for r in await read_records(redis, record))
    done = Counter(r["id"] for r in await read_records(redis, f"{record}:done"))
    assert set(done) == {f"j{n}" for n in range(JOBS)}
    assert max(done.values()) == 1, "a job completed twice"
    assert max(starts.values()) == 1, "a job ran twice"
    assert await admin.llen(keys.dead) == 0
    events = worker.events()
    failing = [e for e in events if e.get("event") == "redis_step_failing"]
    errors = " ".join(e["error"] for e in failing)
    assert "MISCONF" in errors, errors
    assert "BUSY" in errors, errors
    assert "ack" in {e.get("step") for e in failing}, "the faults never met an acknowledgement"
    recovered = [e for e in events if e.get("event") == "redis_step_recovered"]
    assert len(recovered) >= len(failing)
    assert not [e for e in events if e.get("event") == "background_task_ended"]
    print(
        f"{len(failing)} failure episodes ({Counter(e['step'] for e in failing)}),"
        f" stopped in {stopped_in:.1f}s"
    )


def worker_host(worker: Any) -> str:
    started = next(e for e in worker.events() if e.get("event") == "worker_started")
    identity: str = started["worker"]
    return identity.rsplit(":", 1)[0]


@pytest.mark.parametrize("task", ["reconcile", "ack"])
async def test_a_background_task_that_ends_stops_the_process_with_status_1(
    redis: Redis, prefix: str, spawn_worker: Any, task: str
) -> None:
    record = f"{prefix}:rec"
    worker = spawn_worker(queue_table("q", handler="tests.support.handlers:end_task"))
    await wait_started(worker)
    producer = Producer(redis, prefix=prefix)
    await producer.enqueue("q", {"record": record, "task": f"{task}:q"}, id="hook")
    ended = time.monotonic()
    assert await wait_exited(worker, within=15) == 1, worker.log_path.read_text()[-3000:]
    assert time.monotonic() - ended < 10
    [event] = [e for e in worker.events() if e.get("event") == "background_task_ended"]
    assert event["task"] == f"{task}:q"
    # The job itself was finished and acknowledged before the process went.
    assert [json.loads(r)["id"] for r in await redis.lrange(f"{record}:done", 0, -1)] == ["hook"]
    keys = QueueKeys(prefix, "q")
    assert await redis.llen(keys.wait) == 0
    assert await redis.zrange(keys.consumers, 0, -1) == []
