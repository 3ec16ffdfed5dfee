"""One writer for the events stream and the job records: one Lua call per queue and batch
writes both, and a writer with one part leaves the other's keys alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.ops.events import EventHooks, StreamEntries
from alchemy.ops.records import RecordEntries
from alchemy.ops.transitions import TransitionWriter
from alchemy.ops.wiring import operations
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import REDIS_URL, build_config_dict


class CountingRedis(Redis):
    """A real client that counts the commands it sends (what reaches Redis is unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute_command(*args, **options)


def run_of(queue: str, job_id: str | None, worker: str = "w:1") -> list[JobEvent]:
    """A job's first attempt, started and completed."""
    return [
        JobEvent(queue, Transition.STARTED, job_id, 1, worker, first_run=True),
        JobEvent(queue, Transition.COMPLETED, job_id, 1, worker, duration_s=0.002, first_run=True),
    ]


async def written(redis: Redis, prefix: str, queue: str) -> dict[str, Any]:
    keys = QueueKeys(prefix, queue)
    entries = await redis.xrange(keys.events)
    records = await redis.hgetall(keys.records)
    return {
        "entries": [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries],
        "records": {k.decode(): json.loads(v) for k, v in records.items()},
        "throughput": await redis.exists(keys.throughput),
    }


async def test_both_parts_are_written_by_one_call_per_queue(redis: Redis, prefix: str) -> None:
    writer = TransitionWriter(prefix, entries=StreamEntries(), records=RecordEntries())
    assert writer.name == "events+records"
    for event in run_of("a", "a-1") + run_of("b", "b-1") + run_of("a", "a-2") + run_of("a", None):
        writer.on_job(event)
    client = CountingRedis.from_url(REDIS_URL)
    try:
        writer.attach(client)
        assert await writer.flush(within=5.0)
        assert writer.batches == 1
        await writer.close()
    finally:
        await client.aclose()
    assert client.sent.count("EVALSHA") == 2  # one per queue (a NOSCRIPT reload aside)
    assert [c for c in client.sent if c not in ("EVALSHA", "SCRIPT LOAD", "EVAL")] == []
    a, b = await written(redis, prefix, "a"), await written(redis, prefix, "b")
    assert [(e["event"], e.get("job_id")) for e in a["entries"]] == [
        ("started", "a-1"),
        ("completed", "a-1"),
        ("started", "a-2"),
        ("completed", "a-2"),
        ("started", None),
        ("completed", None),
    ]
    assert [e["job_id"] for e in b["entries"]] == ["b-1", "b-1"]
    assert sorted(a["records"]) == ["a-1", "a-2"]  # the job without an id has no record
    assert a["records"]["a-1"]["state"] == "completed"
    assert a["records"]["a-1"]["attempts"][0]["duration_ms"] == 2.0
    assert list(b["records"]) == ["b-1"]
    assert a["throughput"] == b["throughput"] == 1


@pytest.mark.parametrize("part", ["events", "records"])
async def test_a_writer_with_one_part_leaves_the_others_keys_alone(
    redis: Redis, prefix: str, part: str
) -> None:
    if part == "events":
        writer = TransitionWriter(prefix, entries=StreamEntries())
    else:
        writer = TransitionWriter(prefix, records=RecordEntries())
    assert writer.name == part
    for event in run_of("q", "job-1") + run_of("q", None):
        writer.on_job(event)
    # Records only: a transition without a job id is not even buffered.
    assert writer.pending == (4 if part == "events" else 2)
    writer.attach(redis)
    assert await writer.flush(within=5.0)
    out = await written(redis, prefix, "q")
    if part == "events":
        assert len(out["entries"]) == 4
        assert out["throughput"] == 1
        assert out["records"] == {}
    else:
        assert out["entries"] == []
        assert out["throughput"] == 0
        assert list(out["records"]) == ["job-1"]
    await writer.close()


async def test_a_writer_without_parts_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="events stream, records or both"):
        TransitionWriter(prefix)


@pytest.mark.parametrize(
    ("events", "records", "names"),
    [
        (True, True, ["events+records"]),
        (True, False, ["events"]),
        (False, True, ["records"]),
        (False, False, []),
    ],
)
def test_the_worker_runs_one_writer_for_what_is_on(
    prefix: str, events: bool, records: bool, names: list[str]
) -> None:
    raw = build_config_dict(
        prefix,
        {"q": {"handler": "alchemy.handlers.noop:handle"}},
        events={"enabled": events},
        records={"enabled": records},
    )
    ops = operations(parse_config(raw), event_hooks=EventHooks(), collect_metrics=False)
    writers = [o for o in ops.observers if isinstance(o, TransitionWriter)]
    assert [w.name for w in writers] == names
    assert [e for e in ops.extensions if isinstance(e, TransitionWriter)] == writers
