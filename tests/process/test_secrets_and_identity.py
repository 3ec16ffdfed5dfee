"""Secrets never reach logs or the dead-letter list; one identity runs once."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import queue_table, wait_exited, wait_for, wait_started

API_KEY = "sk-ant-api03-THIS-IS-A-TEST-SECRET"
DB_PASSWORD = "pg-pass-4-test"


async def test_secrets_never_appear_in_logs_or_dead_letters(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    keys = QueueKeys(prefix, "q")
    job = {"id": "leaky", "error": "leak_env", "variable": "ANTHROPIC_API_KEY"}
    await redis.lpush(keys.wait, json.dumps({**job, "fail_until_attempt": -1}))
    worker = spawn_worker(
        queue_table("q", max_attempts=1),
        env={
            "ANTHROPIC_API_KEY": API_KEY,
            "OPENAI_API_KEY": "sk-openai-test-secret-value",
            "DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/postgres",
        },
        worker={"name": "leaky"},
    )
    await wait_started(worker)
    await wait_for(lambda: redis.llen(keys.dead))
    [entry] = [json.loads(e) for e in await redis.lrange(keys.dead, 0, -1)]
    assert entry["error"]["type"] == "RuntimeError"
    assert API_KEY not in json.dumps(entry)
    assert "***" in entry["error"]["message"]
    # Log lines reach the file through a writer thread, a moment after the dead letter.
    await wait_for(lambda: worker.has_event("job_finished"), within=5)
    log_text = worker.log_path.read_text()
    for secret in (API_KEY, DB_PASSWORD, "sk-openai-test-secret-value"):
        assert secret not in log_text


async def test_a_second_process_with_the_same_identity_refuses_to_start(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    first = spawn_worker(queue_table("q"), worker={"name": "same"})
    await wait_started(first)
    second = spawn_worker(queue_table("q"), worker={"name": "same"})
    assert await wait_exited(second) == 78
    assert "is in use by live pid" in second.log_path.read_text()
    assert first.proc.poll() is None
