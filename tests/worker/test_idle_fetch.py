"""An idle consumer waits in BRPOPLPUSH. On a queue without a rate limit, the pause and hold
keys are read in the same reply as the job (QueueStore.block_fetch_gated): with every gate
open the job starts without a confirming round trip; a pause or a hold set while the
consumer was blocked still keeps the job from starting, and it waits at the front."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.queue.store import Claim, QueueStore
from tests.conftest import queue_table, read_records, wait_for


@pytest.fixture
def confirms(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every item the confirm step was asked about, in this test's worker."""
    asked: list[bytes] = []
    confirm = QueueStore.confirm

    async def counted(self: QueueStore, item: bytes) -> Claim:
        asked.append(item)
        return await confirm(self, item)

    monkeypatch.setattr(QueueStore, "confirm", counted)
    return asked


async def _blocked(redis: Redis) -> bool:
    clients = await redis.client_list()
    return any(c.get("cmd") == "brpoplpush" and "b" in c.get("flags", "") for c in clients)


async def _idle_worker(redis: Redis, prefix: str, make_config: Any, run_worker: Any) -> str:
    """A worker whose consumer has run one job and now waits in BRPOPLPUSH; the record key."""
    config = make_config(queue_table("q", concurrency=2))
    run_worker(config)
    key = f"{prefix}:ran"
    await Producer(redis, prefix=prefix).enqueue("q", {"record": key}, id="first")
    await wait_for(lambda: redis.llen(f"{key}:done"))
    await wait_for(lambda: _blocked(redis))
    return key


async def test_with_every_gate_open_an_idle_consumer_starts_without_confirming(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any, confirms: list[bytes]
) -> None:
    key = await _idle_worker(redis, prefix, make_config, run_worker)
    asked = len(confirms)
    for n in range(5):
        await Producer(redis, prefix=prefix).enqueue("q", {"record": key}, id=f"open-{n}")
        await wait_for(lambda n=n: _ran(redis, key, f"open-{n}"))
        await wait_for(lambda: _blocked(redis))
    assert len(confirms) == asked  # no confirming round trip for any of them


@pytest.mark.parametrize("gate", ["paused", "paused_until", "held"])
async def test_a_pause_or_hold_set_while_blocked_keeps_the_next_job_waiting(
    redis: Redis,
    prefix: str,
    make_config: Any,
    run_worker: Any,
    confirms: list[bytes],
    gate: str,
) -> None:
    key = await _idle_worker(redis, prefix, make_config, run_worker)
    keys = QueueKeys(prefix, "q")
    if gate == "paused":
        await redis.set(keys.paused, 1)
    elif gate == "paused_until":
        await redis.set(keys.paused_until, "x", px=2500)
    else:
        hold = {"dependency": "postgres", "reason": "refused", "by": "test"}
        await redis.set(keys.held, json.dumps(hold), px=2500)
    await Producer(redis, prefix=prefix).enqueue("q", {"record": key}, id="late")
    # Taken by the blocked consumer, confirmed, and put back at the front, unstarted.
    await wait_for(lambda: _confirmed(confirms, b"late"))
    await wait_for(lambda: _front_is(redis, keys.wait, "late"))
    assert not await _ran(redis, key, "late")
    await redis.delete(keys.paused, keys.paused_until, keys.held)
    await wait_for(lambda: _ran(redis, key, "late"), within=5)
    starts = [e["id"] for e in await read_records(redis, key)]
    assert starts.count("late") == 1


def _confirmed(confirms: list[bytes], marker: bytes) -> bool:
    return any(marker in item for item in confirms)


async def _front_is(redis: Redis, wait: str, job_id: str) -> bool:
    front = await redis.lindex(wait, -1)
    return front is not None and json.loads(front).get("id") == job_id


async def _ran(redis: Redis, key: str, job_id: str) -> bool:
    return any(e["id"] == job_id for e in await read_records(redis, key))
