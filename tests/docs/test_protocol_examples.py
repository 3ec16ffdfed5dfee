"""docs/protocol.md must stay true: its producer examples run against the real Redis and a
real worker, and its key table and dead-letter reasons match the code."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.ops.events import EventStream
from alchemy.ops.records import JobRecords
from alchemy.queue.admin import QueueAdmin
from alchemy.queue.job import DeadReason
from alchemy.queue.keys import IDENTITY_TEMPLATES, KEY_TEMPLATES, WORK_TEMPLATES, QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import REDIS_URL, REPO, build_config_dict, queue_table, wait_for
from tests.fakes.redis_topologies import LocalSentinel
from tests.support import handlers

PROTOCOL = REPO / "docs" / "protocol.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXAMPLE_DATA = {"topic": "heat pumps in cold climates", "words": 800}


def example(name: str) -> str:
    """The fenced block of docs/protocol.md whose first line is ``# protocol-example: NAME``."""
    marker = f"# protocol-example: {name}"
    blocks = [
        body
        for _, body in FENCE.findall(PROTOCOL.read_text())
        if body.split("\n", 1)[0] == marker  # "python" is not "python-wait"
    ]
    assert len(blocks) == 1, f"expected one block marked {marker!r}, found {len(blocks)}"
    return blocks[0]


async def run_example(argv: list[str], prefix: str, url: str = REDIS_URL) -> str:
    """Run an example with the test's Redis (or ``url``) and private prefix; its stdout."""
    completed = await run_example_status(argv, prefix, url)
    assert completed.status == 0, f"{argv[0]} exited {completed.status}: {completed.err}"
    return completed.out


@dataclass(frozen=True)
class Completed:
    status: int
    out: str
    err: str


async def run_example_status(argv: list[str], prefix: str, url: str = REDIS_URL) -> Completed:
    """Run an example with ``url`` and the test's private prefix; its exit status and
    output."""
    env = {
        **os.environ,
        "REDIS_URL": url,
        "ALCHEMY_REDIS_PREFIX": prefix,
        "PYTHONPATH": str(REPO),
    }
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def only_waiting_job(redis: Redis, prefix: str) -> tuple[bytes, dict]:
    items = await redis.lrange(QueueKeys(prefix, "research").wait, 0, -1)
    assert len(items) == 1, items
    return items[0], json.loads(items[0].decode("utf-8"))


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_redis_cli_example_is_run_by_a_worker(
    redis: Redis, prefix: str, make_config, run_worker
) -> None:
    before_ms = int(time.time()) * 1000
    out = await run_example(["sh", "-c", example("redis-cli")], prefix)
    assert out.strip() == "1"  # LPUSH's reply: the wait list's new length
    _, pushed = await only_waiting_job(redis, prefix)
    assert pushed == {"id": "brief-0042", "enqueued_at": pushed["enqueued_at"], **EXAMPLE_DATA}

    handlers.remembered.clear()
    config = make_config(queue_table("research", handler="tests.support.handlers:remember"))
    run_worker(config)
    await wait_for(lambda: handlers.remembered)

    [job] = handlers.remembered
    assert (job.id, job.queue, job.attempt, job.recoveries) == ("brief-0042", "research", 1, 0)
    assert dict(job.data) == EXAMPLE_DATA
    assert job.enqueued_at is not None
    assert before_ms <= job.enqueued_at <= time.time() * 1000
    keys = QueueKeys(prefix, "research")
    await wait_for(lambda: _all_empty(redis, keys, config.worker.identity))


async def _all_empty(redis: Redis, keys: QueueKeys, identity: str) -> bool:
    lengths = [await redis.llen(k) for k in (keys.wait, keys.processing(identity), keys.dead)]
    return lengths == [0, 0, 0] and await redis.zcard(keys.delayed) == 0


async def test_python_example_pushes_the_documented_job(redis: Redis, prefix: str) -> None:
    before_ms = time.time() * 1000
    out = await run_example([sys.executable, "-c", example("python")], prefix)
    assert out.strip() == "enqueued brief-0042"
    _, pushed = await only_waiting_job(redis, prefix)
    assert pushed == {"id": "brief-0042", "enqueued_at": pushed["enqueued_at"], **EXAMPLE_DATA}
    assert before_ms <= pushed["enqueued_at"] <= time.time() * 1000


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_redis_cli_wait_example_counts_a_push_once_a_replica_has_it(
    redis: Redis, prefix: str, redis_sentinel: LocalSentinel
) -> None:
    master_url = f"redis://{redis_sentinel.master.address}/0"
    done = await run_example_status(["sh", "-c", example("redis-cli-wait")], prefix, master_url)
    assert (done.status, done.out.strip()) == (0, "brief-0042 pushed and replicated"), done.err
    wait_key = QueueKeys(prefix, "research").wait
    async with Redis.from_url(f"redis://{redis_sentinel.replica.address}/0") as replica:
        [pushed] = await replica.lrange(wait_key, 0, -1)  # on the replica already
    assert json.loads(pushed)["id"] == "brief-0042"
    async with Redis.from_url(master_url) as master:
        await master.delete(wait_key)
    # The shared test server has no replica: WAIT answers 0 after 200 ms, and the example
    # says to push again.
    alone = await run_example_status(["sh", "-c", example("redis-cli-wait")], prefix)
    assert alone.status == 1
    assert "not replicated yet: push it again with the same id" in alone.err
    _, still_pushed = await only_waiting_job(redis, prefix)  # pushed all the same
    assert still_pushed["id"] == "brief-0042"


async def test_python_wait_example_pushes_once_a_replica_has_it(
    redis: Redis, prefix: str, redis_sentinel: LocalSentinel
) -> None:
    master_url = f"redis://{redis_sentinel.master.address}/0"
    out = await run_example([sys.executable, "-c", example("python-wait")], prefix, master_url)
    assert out.strip() == "enqueued and replicated brief-0042"
    wait_key = QueueKeys(prefix, "research").wait
    async with Redis.from_url(f"redis://{redis_sentinel.replica.address}/0") as replica:
        [pushed] = await replica.lrange(wait_key, 0, -1)
    async with Redis.from_url(master_url) as master:
        await master.delete(wait_key)
    assert json.loads(pushed) == {
        "id": "brief-0042",
        "enqueued_at": json.loads(pushed)["enqueued_at"],
        **EXAMPLE_DATA,
    }
    # Without a replica every attempt says so, with the same id each time, then it stops.
    alone = await run_example_status([sys.executable, "-c", example("python-wait")], prefix)
    assert alone.status == 1
    attempts = alone.out.strip().splitlines()
    assert len(attempts) == 5
    assert all("'brief-0042' was pushed, but 0 of 1 replica(s)" in line for line in attempts)
    assert "no replica confirmed it" in alone.err
    assert await redis.llen(QueueKeys(prefix, "research").wait) == 5  # idempotency by id


async def test_producer_writes_the_documented_shape(redis: Redis, prefix: str) -> None:
    data = {"topic": "Wärmepumpen im Winter", "words": 800, "tags": ["energy"], "draft": None}
    before_ms = time.time() * 1000
    job_id = await Producer(redis, prefix=prefix).enqueue("research", data, id="brief-0042")
    after_ms = time.time() * 1000

    raw, pushed = await only_waiting_job(redis, prefix)
    assert job_id == "brief-0042"
    # The reserved fields first, then the handler's data at the top level; nothing else.
    assert list(pushed) == ["id", "enqueued_at", "topic", "words", "tags", "draft"]
    assert pushed == {"id": "brief-0042", "enqueued_at": pushed["enqueued_at"], **data}
    assert isinstance(pushed["enqueued_at"], int | float)
    assert before_ms - 1 <= pushed["enqueued_at"] <= after_ms + 1
    # Compact JSON in UTF-8, with no ASCII escapes.
    assert raw == json.dumps(pushed, ensure_ascii=False, separators=(",", ":")).encode()
    assert "Wärmepumpen".encode() in raw


async def test_producer_makes_an_id_and_refuses_reserved_fields(redis: Redis, prefix: str) -> None:
    producer = Producer(redis, prefix=prefix)
    job_id = await producer.enqueue("research", {"n": 1})
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    _, pushed = await only_waiting_job(redis, prefix)
    assert pushed["id"] == job_id
    for reserved in ("id", "enqueued_at", "_alchemy"):
        with pytest.raises(ValueError, match=reserved):
            await producer.enqueue("research", {reserved: "x"})
    with pytest.raises(ValueError, match="1-256"):
        await producer.enqueue("research", {"n": 2}, id="x" * 257)
    assert await redis.llen(QueueKeys(prefix, "research").wait) == 1


def test_key_table_matches_the_key_templates() -> None:
    text = PROTOCOL.read_text()
    documented = set(re.findall(r"^\| `(PREFIX:[^`]+)` \|", text, re.MULTILINE))
    in_code = {
        template.format(
            prefix="PREFIX", queue="QUEUE", identity="IDENTITY", job_id="ID", work_key="WORK_KEY"
        )
        for template in [
            *KEY_TEMPLATES.values(),
            *IDENTITY_TEMPLATES.values(),
            *WORK_TEMPLATES.values(),
        ]
    }
    assert documented == in_code


def test_every_dead_letter_reason_is_documented() -> None:
    text = PROTOCOL.read_text()
    for reason in DeadReason:
        assert f"| `{reason}` |" in text, reason


async def test_progress_example_reports_and_returns(
    redis: Redis, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_worker: Any
) -> None:
    module = f"progress_example_{prefix.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(example("progress"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse_config(build_config_dict(prefix, {"research": {"handler": f"{module}:handle"}}))
    events = EventStream(prefix, identity=config.worker.identity)
    records = JobRecords(prefix)
    run_worker(config, observers=[events, records], extensions=[events, records])
    await Producer(redis, prefix=prefix).enqueue("research", EXAMPLE_DATA, id="brief-0044")
    admin = QueueAdmin(redis, prefix=prefix)

    async def completed() -> dict | None:
        record = await admin.record("research", "brief-0044")
        return record if record and record["state"] == "completed" else None  # type: ignore[return-value]

    record = await wait_for(completed)
    assert (record["progress"], record["step"]) == (0.9, "saved")
    assert record["result"] == {"content_id": 42, "url": "https://example.com/a.png"}
    entries = await redis.xrange(QueueKeys(prefix, "research").events)
    steps = [f[b"step"].decode() for _, f in entries if f[b"event"] == b"progress"]
    assert steps == ["loaded", "saved"]
