"""A handler module's ``warm`` hook runs before the first fetch and before READY=1 (issue 12,
goal 4), in a real worker process; one that fails does not stop the process."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from alchemy.queue.producer import Producer
from tests.conftest import WorkerProcess, wait_for, wait_started
from tests.ops.test_systemd_notify import NotifyListener, notify_env

QUEUE = "warm"
SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
async def listener() -> AsyncIterator[NotifyListener]:
    directory = tempfile.mkdtemp(prefix="alchemy-warm-")
    path = os.path.join(directory, "notify.sock")
    receiver = NotifyListener(path, path)
    receiver.attach()
    yield receiver
    receiver.close()
    os.unlink(path)
    os.rmdir(directory)


def names(process: WorkerProcess) -> list[str]:
    return [str(e.get("event")) for e in process.events()]


async def test_warm_runs_before_the_first_fetch_and_before_ready(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker, listener: NotifyListener
) -> None:
    record = f"{prefix}:rec"
    producer = Producer(redis, prefix=prefix)
    for n in range(3):  # waiting before the process starts: the first fetch takes them
        await producer.enqueue(QUEUE, {"record": record}, id=f"w-{n}")
    process = spawn_worker(
        {QUEUE: {"handler": "tests.support.warm_handlers:handle", "concurrency": 3}},
        env=notify_env(listener),
    )
    await wait_started(process)
    await wait_for(lambda: listener.times("READY"), within=10)

    async def all_ran() -> bool:
        return int(await redis.llen(record)) >= 3

    await wait_for(all_ran, within=10)
    await wait_for(lambda: process.has_event("systemd_ready"), within=10)  # logs lag
    seen = [json.loads(entry) for entry in await redis.lrange(record, 0, -1)]
    assert seen == [{"warmed": True}] * 3
    order = names(process)
    assert order.index("handler_warmed") < order.index("worker_started"), order
    assert order.index("handler_warmed") < order.index("systemd_ready"), order
    warmed = next(e for e in process.events() if e.get("event") == "handler_warmed")
    assert warmed["hook"] == "tests.support.warm_handlers.warm"
    assert warmed["ms"] >= 900


async def test_a_failing_warm_is_logged_and_the_worker_runs(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker
) -> None:
    record = f"{prefix}:rec"
    process = spawn_worker({QUEUE: {"handler": "tests.support.warm_broken:handle"}})
    await wait_started(process)
    await Producer(redis, prefix=prefix).enqueue(QUEUE, {"record": record}, id="after")

    async def ran() -> bool:
        return await redis.lrange(record, 0, -1) == [b"after"]

    await wait_for(ran, within=10)
    failed = [e for e in process.events() if e.get("event") == "handler_warm_failed"]
    assert [e["error"] for e in failed] == ["RuntimeError: told to fail"]
