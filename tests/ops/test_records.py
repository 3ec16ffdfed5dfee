"""Job records: the last transition of each job, capped per queue and expiring."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis

from alchemy.ops.records import JobRecords
from alchemy.queue.admin import JobRecord, QueueAdmin
from alchemy.queue.job import ErrorInfo
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import plant_dying_job, queue_table, wait_for

TTL = 3600.0


async def read_record(redis: Redis, prefix: str, queue: str, job_id: str) -> JobRecord | None:
    """The lookup the CLI and the admin API use."""
    return await QueueAdmin(redis, prefix=prefix).record(queue, job_id)


async def test_records_follow_a_job_through_retries_and_death(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", backoff_initial=0.05, backoff_jitter=0.0, max_attempts=2))
    keys = QueueKeys(prefix, "q")
    for job in (
        {"id": "flaky", "fail_until_attempt": 2},
        {"id": "doomed", "fail_until_attempt": -1},
        {"id": "fine"},
    ):
        await redis.lpush(keys.wait, json.dumps(job))
    await redis.lpush(keys.wait, b"not json")
    records = JobRecords(prefix, ttl=TTL)
    run_worker(config, observers=[records], extensions=[records])

    async def state(job_id: str) -> str | None:
        record = await read_record(redis, prefix, "q", job_id)
        return record["state"] if record else None

    for job_id, final in (("flaky", "completed"), ("doomed", "dead"), ("fine", "completed")):
        await wait_for(lambda j=job_id, f=final: _is(state(j), f))
    flaky = await read_record(redis, prefix, "q", "flaky")
    assert flaky is not None
    assert (flaky["attempt"], flaky["worker"], flaky["reason"]) == (2, config.worker.identity, None)
    assert flaky["last_error"] == {"type": "ValueError", "message": "told to fail"}
    assert flaky["first_started_ms"] is not None
    assert flaky["started_ms"] is not None
    assert flaky["first_started_ms"] < flaky["started_ms"] <= flaky["finished_ms"]
    assert flaky["duration_ms"] is not None
    assert 0 < flaky["expires_in_s"] <= TTL
    doomed = await read_record(redis, prefix, "q", "doomed")
    assert doomed is not None
    assert (doomed["attempt"], doomed["reason"]) == (2, "max_attempts")
    fine = await read_record(redis, prefix, "q", "fine")
    assert fine is not None
    assert fine["last_error"] is None
    assert fine["first_started_ms"] == fine["started_ms"]
    assert await read_record(redis, prefix, "q", "never-seen") is None
    assert await redis.hlen(keys.records) == 3  # the unreadable job has no id, no record


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_a_retry_elsewhere_keeps_the_history(redis: Redis, prefix: str) -> None:
    first, second = JobRecords(prefix, ttl=TTL), JobRecords(prefix, ttl=TTL)
    for records in (first, second):
        records.attach(redis)
    error = ErrorInfo("TimeoutError", "upstream slow")
    first.on_job(JobEvent("q", Transition.STARTED, "j", 1, "w1"))
    await first.flush()
    first.on_job(JobEvent("q", Transition.RETRYING, "j", 1, "w1", 0.5, error=error, retry_in_s=5))
    await first.flush()
    one = await read_record(redis, prefix, "q", "j")
    assert one is not None
    assert (one["state"], one["worker"]) == ("retrying", "w1")
    assert one["retry_at_ms"] == one["updated_ms"] + 5000
    # Attempt 2 runs in another process, started and finished within one batch.
    second.on_job(JobEvent("q", Transition.STARTED, "j", 2, "w2"))
    second.on_job(JobEvent("q", Transition.COMPLETED, "j", 2, "w2", duration_s=0.25))
    await second.flush()
    two = await read_record(redis, prefix, "q", "j")
    assert two is not None
    assert (two["state"], two["attempt"], two["worker"]) == ("completed", 2, "w2")
    assert two["first_started_ms"] == one["first_started_ms"]
    assert two["last_error"] == {"type": "TimeoutError", "message": "upstream slow"}
    assert two["started_ms"] is not None
    assert two["duration_ms"] == 250.0
    assert second.batches == 1


async def test_records_are_capped_per_queue(redis: Redis, prefix: str) -> None:
    records = JobRecords(prefix, max_per_queue=100, ttl=TTL)
    records.attach(redis)
    for n in range(350):
        records.on_job(JobEvent("q", Transition.COMPLETED, f"j{n}", 1, "w", duration_s=0.0))
        if n % 50 == 49:
            await records.flush()
    records.on_job(JobEvent("other", Transition.COMPLETED, "x", 1, "w", duration_s=0.0))
    await records.flush()
    keys = QueueKeys(prefix, "q")
    assert await redis.hlen(keys.records) == 50
    assert await redis.hlen(keys.records_old) == 50
    for n in (349, 250):
        assert await read_record(redis, prefix, "q", f"j{n}") is not None
    for n in (0, 249):
        assert await read_record(redis, prefix, "q", f"j{n}") is None
    assert await read_record(redis, prefix, "other", "x") is not None


async def test_records_expire(redis: Redis, prefix: str) -> None:
    records = JobRecords(prefix, ttl=1.0)
    records.attach(redis)
    keys = QueueKeys(prefix, "q")
    records.on_job(JobEvent("q", Transition.COMPLETED, "old", 1, "w", duration_s=0.0))
    await records.flush()
    assert 0 < await redis.pttl(keys.records) <= 1000
    assert await read_record(redis, prefix, "q", "old") is not None
    await asyncio.sleep(1.1)
    assert await read_record(redis, prefix, "q", "old") is None
    records.on_job(JobEvent("q", Transition.COMPLETED, "new", 1, "w", duration_s=0.0))
    await records.flush()
    assert await redis.hkeys(keys.records) == [b"new"]
    assert not await redis.exists(keys.records_old)


async def test_a_generation_older_than_half_the_ttl_is_retired(redis: Redis, prefix: str) -> None:
    records = JobRecords(prefix, ttl=2.0)
    records.attach(redis)
    keys = QueueKeys(prefix, "q")
    records.on_job(JobEvent("q", Transition.COMPLETED, "a", 1, "w", duration_s=0.0))
    await records.flush()
    await asyncio.sleep(1.05)
    records.on_job(JobEvent("q", Transition.COMPLETED, "b", 1, "w", duration_s=0.0))
    await records.flush()
    assert await redis.hkeys(keys.records) == [b"b"]
    assert await redis.hkeys(keys.records_old) == [b"a"]
    a = await read_record(redis, prefix, "q", "a")
    assert a is not None
    assert a["expires_in_s"] == 0  # under a second left
    assert 1000 < await redis.pttl(keys.records) <= 2000


async def test_recovered_and_poisoned_jobs_have_records(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q"))
    keys = QueueKeys(prefix, "q")
    identity = config.worker.identity
    # What a killed earlier run of this identity left: a job that will run again, and one
    # whose processes died as often as they may.
    await redis.lpush(keys.processing(identity), json.dumps({"id": "left", "sleep": 0.5}))
    await plant_dying_job(redis, config, "q", {"id": "killer"})
    records = JobRecords(prefix, ttl=TTL)
    seen: list[str] = []

    class States:
        def on_job(self, event: JobEvent) -> None:
            if event.job_id == "left":
                seen.append(event.transition.value)

        def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
            return None

    run_worker(config, observers=[records, States()], extensions=[records])
    await wait_for(lambda: _is(_state(redis, prefix, "killer"), "dead"))
    killer = await read_record(redis, prefix, "q", "killer")
    assert killer is not None
    assert (killer["reason"], killer["attempt"], killer["worker"]) == ("poison", 1, identity)
    assert killer["last_error"] is not None
    assert killer["last_error"]["type"] == "ProcessDied"
    assert killer["finished_ms"] is not None
    await wait_for(lambda: _is(_state(redis, prefix, "left"), "completed"))
    left = await read_record(redis, prefix, "q", "left")
    assert left is not None
    # Its recovery was recorded (and then its run): the death stays as its last error.
    assert seen == ["recovered", "started", "completed"]
    assert left["last_error"] is not None
    assert left["last_error"]["type"] == "ProcessDied"


async def _state(redis: Redis, prefix: str, job_id: str) -> str | None:
    record = await read_record(redis, prefix, "q", job_id)
    return record["state"] if record else None


def test_the_usual_batch_makes_the_same_record_as_the_general_rule() -> None:
    """A start and the end of that run in one batch take a shortcut: it must build exactly
    what the general rule builds, whatever the end was."""
    from alchemy.ops import records

    error = ErrorInfo("Boom", "it broke")
    ends = [
        JobEvent("q", Transition.COMPLETED, "j", 1, "h:w", duration_s=0.0123, result='{"a":1}'),
        JobEvent(
            "q", Transition.RETRYING, "j", 2, "h:w", duration_s=1.5, error=error, retry_in_s=2.25
        ),
        JobEvent(
            "q",
            Transition.DEAD,
            "j",
            3,
            "h:w",
            duration_s=0.2,
            error=error,
            reason="max_attempts",
            progress=0.5,
            step="two",
        ),
        JobEvent(
            "q", Transition.HELD, "j", 1, "h:w", duration_s=0.001, error=error, reason="postgres"
        ),
        JobEvent("q", Transition.DEAD, "j", 1, "h:w", error=error, reason="invalid_json"),
    ]
    for end in ends:
        for first_run in (True, False):
            begun = JobEvent(
                "q",
                Transition.STARTED,
                "j",
                end.attempt,
                "h:w",
                pickup_s=0.001,
                first_run=first_run,
            )
            history = [(begun, 1_000), (end._replace(first_run=first_run), 1_500)]
            general = records._record_general(history)
            assert records._record(history) == general, end


def test_a_run_started_in_the_batch_starts_when_its_started_event_was_heard() -> None:
    """The record's ``started_ms`` is the latest run's start as heard, the same figure as
    ``first_started_ms`` and the run's own ``started_ms`` for a first attempt; not the
    finish time minus the handler's duration, which is later by whatever ran around the
    handler (it differed by a millisecond in a full suite run)."""
    from alchemy.ops import records

    begun = JobEvent("q", Transition.STARTED, "j", 1, "h:w", pickup_s=0.001, first_run=True)
    end = JobEvent("q", Transition.COMPLETED, "j", 1, "h:w", duration_s=0.0044, first_run=True)
    for build in (records._record, records._record_general):
        record, _ = build([(begun, 1_000), (end, 1_010)])
        assert record["started_ms"] == record["first_started_ms"] == 1_000
        assert record["attempts"][0]["started_ms"] == 1_000
    # A run whose start was in an earlier batch: the finish minus the duration, as before.
    record, _ = records._record_general([(end._replace(first_run=False), 1_010)])
    assert record["started_ms"] == 1_006
