"""Acceptance 1: jobs LPUSHed with redis-cli are each handled exactly once, in FIFO order
for a single consumer; on a single Redis and on a Redis Cluster (issue 10, acceptance 3)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from tests.conftest import REDIS_URL, wait_for

JOBS = 10_000
pytestmark = pytest.mark.parametrize("redis_topology", ["single", "cluster"], indirect=True)


def redis_cli_target(redis_section: dict[str, Any]) -> list[str]:
    """redis-cli's arguments to reach the queues: the URL, or a Cluster node with -c (it
    follows MOVED to the node of the queue's slot)."""
    if not redis_section:
        return ["-u", REDIS_URL]
    host, _, port = redis_section["cluster_nodes"][0].rpartition(":")
    return ["-c", "-h", host, "-p", port]


def lpush_with_redis_cli(
    tmp_path: Path, key: str, prefix: str, count: int, target: list[str]
) -> list[str]:
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is not installed (Debian: apt-get install redis-tools)")
    ids = [f"job-{n:05d}" for n in range(count)]
    script = tmp_path / "push.redis"
    with script.open("w") as out:
        for job_id in ids:
            body = json.dumps({"id": job_id, "record": f"{prefix}:seen", "n": job_id})
            out.write(f"LPUSH {key} '{body}'\n")
    with script.open("rb") as stdin:
        subprocess.run(
            ["redis-cli", *target],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
    return ids


def handler_table(concurrency: int) -> dict[str, Any]:
    return {"q": {"handler": "tests.support.handlers:record_only", "concurrency": concurrency}}


async def test_single_consumer_handles_each_job_once_in_fifo_order(
    redis: Redis,
    queue_redis: RedisClient,
    redis_section: dict[str, Any],
    prefix: str,
    tmp_path: Path,
    make_config: Any,
    run_worker: Any,
) -> None:
    keys = QueueKeys(prefix, "q")
    target = redis_cli_target(redis_section)
    ids = lpush_with_redis_cli(tmp_path, keys.wait, prefix, JOBS, target)
    assert await queue_redis.llen(keys.wait) == JOBS
    config = make_config(handler_table(concurrency=1))
    run_worker(config)
    await wait_for(lambda: _at_least(redis, f"{prefix}:seen", JOBS), within=90, interval=0.2)
    seen = [x.decode() for x in await redis.lrange(f"{prefix}:seen", 0, -1)]
    assert seen == ids  # each once, in the order they were pushed
    await wait_for(lambda: _empty(queue_redis, keys.processing(config.worker.identity)))
    assert await queue_redis.llen(keys.wait) == 0
    assert await queue_redis.llen(keys.dead) == 0


async def test_competing_consumers_handle_each_job_exactly_once(
    redis: Redis,
    queue_redis: RedisClient,
    redis_section: dict[str, Any],
    prefix: str,
    tmp_path: Path,
    make_config: Any,
    run_worker: Any,
) -> None:
    keys = QueueKeys(prefix, "q")
    ids = lpush_with_redis_cli(tmp_path, keys.wait, prefix, JOBS, redis_cli_target(redis_section))
    first = make_config(handler_table(concurrency=8), worker={"name": "a"})
    second = make_config(handler_table(concurrency=8), worker={"name": "b"})
    run_worker(first)
    run_worker(second)
    await wait_for(lambda: _at_least(redis, f"{prefix}:seen", JOBS), within=90, interval=0.2)
    seen = Counter(x.decode() for x in await redis.lrange(f"{prefix}:seen", 0, -1))
    assert set(seen) == set(ids)
    assert max(seen.values()) == 1
    for config in (first, second):
        await wait_for(lambda c=config: _empty(queue_redis, keys.processing(c.worker.identity)))


async def _at_least(redis: RedisClient, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n


async def _empty(redis: RedisClient, key: str) -> bool:
    return int(await redis.llen(key)) == 0
