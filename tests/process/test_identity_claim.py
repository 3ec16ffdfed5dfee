"""A worker identity is claimed atomically: two live processes never share one, even when
both are pid 1 of their own pid namespace (containers), and a restart after a crash takes
it back (at once when the old pid can be seen dead, within the claim's TTL otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys, identity_claim_key
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, wait_exited, wait_for, wait_started

HOST = "container-host"
NAME = "shared"
IDENTITY = f"{HOST}:{NAME}"
TTL = 2.0  # the test config's heartbeat_ttl
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs unshare (util-linux) and root for new pid namespaces",
)


def same_identity(spawn_worker: Any, *, wrapper: list[str], ttl: float = TTL) -> Any:
    worker = {"name": NAME, "host": HOST, "heartbeat_ttl": ttl}
    return spawn_worker(queue_table("q"), worker=worker, wrapper=wrapper)


@needs_unshare
async def test_two_pid_namespaces_cannot_share_an_identity(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    first = same_identity(spawn_worker, wrapper=UNSHARE)
    await wait_started(first)
    claim = json.loads(await redis.get(identity_claim_key(prefix, IDENTITY)))
    assert claim["pid"] == 1, "the first worker must be pid 1 of its namespace"

    second = same_identity(spawn_worker, wrapper=UNSHARE)
    started = time.monotonic()
    assert await wait_exited(second, within=TTL + 10) == 78
    waited = time.monotonic() - started
    output = second.log_path.read_text()
    assert "is in use by a live process in another pid namespace" in output, output
    assert not second.has_event("worker_started")
    assert waited >= TTL - 0.5, "it must wait out the claim before it can tell"
    assert first.proc.poll() is None
    # The first one still holds the identity, unchanged.
    again = json.loads(await redis.get(identity_claim_key(prefix, IDENTITY)))
    assert again["incarnation"] == claim["incarnation"]


@needs_unshare
async def test_a_container_restarted_after_a_crash_takes_its_identity_back(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    record = f"{prefix}:rec"
    ttl = 6.0  # long enough that the claim outlives the restart
    first = same_identity(spawn_worker, wrapper=UNSHARE, ttl=ttl)
    await wait_started(first)
    await Producer(redis, prefix=prefix).enqueue("q", {"record": record, "sleep": 30}, id="held")
    await wait_for(lambda: redis.llen(record))
    os.kill(first.pid, signal.SIGKILL)
    await wait_exited(first)

    # A new pid namespace cannot see the old pid: it waits out the claim, then takes it and
    # returns what the dead process left in its processing list. (The kernel may give the
    # new namespace the dead one's number; then the old pid 1 is judged dead at once, which
    # is right: a live namespace's number is never reused.)
    second = same_identity(spawn_worker, wrapper=UNSHARE, ttl=ttl)
    await wait_started(second, within=ttl + 10)
    assert second.has_event("identity_claim_waiting") or second.has_event("identity_taken_back")
    assert second.has_event("recovered_own_jobs")

    async def started_again() -> bool:
        return await redis.llen(record) == 2

    await wait_for(started_again, within=10)
    starts = [json.loads(r) for r in await redis.lrange(record, 0, -1)]
    assert [s["recoveries"] for s in starts] == [0, 1]


async def test_a_restart_on_the_same_machine_takes_the_identity_back_at_once(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    ttl = 6.0  # long enough that the claim outlives the restart
    first = same_identity(spawn_worker, wrapper=[], ttl=ttl)
    await wait_started(first)
    first.kill()
    second = same_identity(spawn_worker, wrapper=[], ttl=ttl)
    started = time.monotonic()
    await wait_started(second)
    assert time.monotonic() - started < ttl / 2, "a dead pid here is seen dead at once"
    assert second.has_event("identity_taken_back")
    assert not second.has_event("identity_claim_waiting")


async def test_a_clean_stop_lets_go_of_the_identity(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    worker = same_identity(spawn_worker, wrapper=[])
    await wait_started(worker)
    assert await redis.exists(identity_claim_key(prefix, IDENTITY))
    worker.signal(signal.SIGTERM)
    assert await wait_exited(worker) == 0
    assert not await redis.exists(identity_claim_key(prefix, IDENTITY))
    assert await redis.zrange(QueueKeys(prefix, "q").consumers, 0, -1) == []


async def test_a_process_whose_identity_was_taken_stops(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    worker = same_identity(spawn_worker, wrapper=[])
    await wait_started(worker)
    # As if the process had been frozen past its TTL and another had claimed the identity.
    key = identity_claim_key(prefix, IDENTITY)
    await redis.set(key, json.dumps({"incarnation": "someone-else", "host": HOST}), px=60_000)
    assert await wait_exited(worker, within=10) == 1
    assert worker.has_event("identity_lost")
    assert json.loads(await redis.get(key))["incarnation"] == "someone-else"
