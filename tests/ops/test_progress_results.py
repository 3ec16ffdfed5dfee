"""Progress and results of a real worker's jobs: in the job's record, in the events stream and
in ``alchemy job``; every run of a job in its record's attempts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from alchemy.ops.events import EventStream
from alchemy.ops.records import MAX_ATTEMPTS_KEPT, JobRecords
from alchemy.queue.admin import JobRecord, QueueAdmin
from alchemy.queue.job import ErrorInfo
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import wait_for
from tests.support.cli import alchemy_job

HANDLER = "tests.support.handlers:reporting"


def table(**settings: Any) -> dict[str, Any]:
    return {"q": {"handler": HANDLER, "backoff_initial": 0.05, "backoff_jitter": 0.0, **settings}}


async def record_of(redis: Redis, prefix: str, job_id: str) -> JobRecord | None:
    return await QueueAdmin(redis, prefix=prefix).record("q", job_id)


async def stream(redis: Redis, prefix: str) -> list[dict[str, str]]:
    entries = await redis.xrange(QueueKeys(prefix, "q").events)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def start(run_worker: Any, make_config: Any, prefix: str, **settings: Any) -> Any:
    config = make_config(table(**settings))
    events = EventStream(prefix, identity=config.worker.identity)
    records = JobRecords(prefix, ttl=3600.0)
    run_worker(config, observers=[events, records], extensions=[events, records])
    return config


async def test_steps_result_and_every_attempt_in_record_stream_and_cli(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any, tmp_path: Path
) -> None:
    start(run_worker, make_config, prefix, max_attempts=3)
    job = {
        "id": "brief-7",
        "steps": [[0.1, "loaded", 0], [0.4, "prompt built", 0], [0.9, "saved", 0]],
        "chatty": 50,
        "fail_until_attempt": 2,
        "returns": {"content_id": 7, "title": "<b>Heat pumps</b>"},
    }
    await redis.lpush(QueueKeys(prefix, "q").wait, json.dumps(job))

    async def completed() -> JobRecord | None:
        record = await record_of(redis, prefix, "brief-7")
        return record if record and record["state"] == "completed" else None

    record = await wait_for(completed)
    assert record["result"] == {"content_id": 7, "title": "<b>Heat pumps</b>"}
    assert (record["progress"], record["step"]) == (0.9, "saved")
    assert record["last_error"] == {"type": "ValueError", "message": "told to fail on attempt 1"}
    runs = record["attempts"]
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "retrying"), (2, "completed")]
    assert runs[0]["error"] == {"type": "ValueError", "message": "told to fail on attempt 1"}
    assert runs[1]["error"] is None
    for run in runs:
        assert run["started_ms"] is not None
        assert run["finished_ms"] is not None
        assert run["started_ms"] <= run["finished_ms"]
    assert record["attempts_dropped"] == 0

    entries = await wait_for(lambda: _has_completed(redis, prefix, "brief-7"))
    mine = [e for e in entries if e.get("job_id") == "brief-7"]
    steps = [(e["attempt"], e["step"], e["progress"]) for e in mine if e["event"] == "progress"]
    # Each new step at once; 50 reports of a step in a row are one entry (and the throttle's
    # late one, if the handler moved on within the interval, is dropped for the next step).
    for attempt in ("1", "2"):
        assert [s for a, s, _ in steps if a == attempt] == ["loaded", "prompt built", "saved"]
    assert ("2", "saved", "0.9") in steps
    done = next(e for e in mine if e["event"] == "completed")
    assert json.loads(done["result"]) == {"content_id": 7, "title": "<b>Heat pumps</b>"}
    assert "result" not in next(e for e in mine if e["event"] == "retrying")

    status, text = await alchemy_job(tmp_path, prefix, "q", "brief-7")
    assert status == 0, text
    lines = text.splitlines()
    assert "progress          0.9" in lines
    assert "step              saved" in lines
    assert 'result            {"content_id": 7, "title": "<b>Heat pumps</b>"}' in lines
    assert "attempts          2" in lines
    run_lines = [line for line in lines if line.startswith("  #")]
    assert run_lines[0].split()[:2] == ["#1", "retrying"]
    assert run_lines[0].endswith("ValueError: told to fail on attempt 1")
    assert run_lines[1].split()[:2] == ["#2", "completed"]
    status, text = await alchemy_job(tmp_path, prefix, "q", "brief-7", "--json")
    assert json.loads(text)["result"] == {"content_id": 7, "title": "<b>Heat pumps</b>"}


async def _has_completed(redis: Redis, prefix: str, job_id: str) -> list[dict[str, str]] | None:
    entries = await stream(redis, prefix)
    done = any(e.get("job_id") == job_id and e["event"] == "completed" for e in entries)
    return entries if done else None


async def test_a_slow_job_shows_its_progress_while_it_runs(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    start(run_worker, make_config, prefix)
    steps = [[0.25, "one", 0.4], [0.5, "two", 0.4], [0.75, "three", 0.4]]
    await redis.lpush(QueueKeys(prefix, "q").wait, json.dumps({"id": "slow", "steps": steps}))
    seen: list[tuple[str, float | None, str | None]] = []

    async def finished() -> bool:
        record = await record_of(redis, prefix, "slow")
        if record is not None:
            moment = (record["state"], record.get("progress"), record.get("step"))
            if not seen or seen[-1] != moment:
                seen.append(moment)
        return record is not None and record["state"] == "completed"

    await wait_for(finished, interval=0.05)
    assert ("started", 0.25, "one") in seen
    assert ("started", 0.5, "two") in seen
    assert ("started", 0.75, "three") in seen
    assert seen[-1] == ("completed", 0.75, "three")
    record = await record_of(redis, prefix, "slow")
    assert record is not None
    assert record["result"] is None
    assert [r["outcome"] for r in record["attempts"]] == ["completed"]


async def test_runs_of_one_job_in_two_processes_join_into_one_timeline(
    redis: Redis, prefix: str
) -> None:
    first, second = JobRecords(prefix, ttl=60.0), JobRecords(prefix, ttl=60.0)
    for records in (first, second):
        records.attach(redis)
    error = ErrorInfo("TimeoutError", "upstream slow")
    first.on_job(JobEvent("q", Transition.STARTED, "j", 1, "w1", first_run=True))
    await first.flush()
    first.on_job(JobEvent("q", Transition.PROGRESS, "j", 1, "w1", progress=0.5, step="half"))
    await first.flush()
    one = await record_of(redis, prefix, "j")
    assert one is not None
    assert (one["state"], one["progress"], one["step"]) == ("started", 0.5, "half")
    assert [r["outcome"] for r in one["attempts"]] == ["running"]
    # The retry of the first run, in a later batch: it takes the running run's place.
    first.on_job(JobEvent("q", Transition.RETRYING, "j", 1, "w1", 0.0, error=error, retry_in_s=1))
    await first.flush()
    # Attempt 2 elsewhere: dies with its process, is recovered, then completes.
    second.on_job(JobEvent("q", Transition.STARTED, "j", 2, "w2"))
    await second.flush()
    died = ErrorInfo("ProcessDied", "w2 died")
    second.on_job(JobEvent("q", Transition.RECOVERED, "j", 2, "w3", error=died, dead_worker="w2"))
    second.on_job(JobEvent("q", Transition.STARTED, "j", 2, "w3", recoveries=1))
    second.on_job(
        JobEvent("q", Transition.COMPLETED, "j", 2, "w3", 0.1, recoveries=1, result='{"ok":1}')
    )
    await second.flush()
    record = await record_of(redis, prefix, "j")
    assert record is not None
    runs = [(r["attempt"], r["worker"], r["outcome"]) for r in record["attempts"]]
    assert runs == [(1, "w1", "retrying"), (2, "w2", "recovered"), (2, "w3", "completed")]
    assert record["attempts"][0]["error"] == {"type": "TimeoutError", "message": "upstream slow"}
    assert record["attempts"][1]["started_ms"] is not None  # kept from its start
    assert record["result"] == {"ok": 1}
    assert record["first_started_ms"] == one["first_started_ms"]


async def test_a_record_lists_the_latest_runs_and_counts_the_others(
    redis: Redis, prefix: str
) -> None:
    records = JobRecords(prefix, ttl=60.0)
    records.attach(redis)
    error = ErrorInfo("DeferredError", "later")
    for n in range(MAX_ATTEMPTS_KEPT + 5):
        records.on_job(JobEvent("q", Transition.STARTED, "d", 1, "w", first_run=n == 0))
        records.on_job(JobEvent("q", Transition.DEFERRED, "d", 1, "w", 0.01, error=error))
        await records.flush()
    record = await record_of(redis, prefix, "d")
    assert record is not None
    assert len(record["attempts"]) == MAX_ATTEMPTS_KEPT
    assert record["attempts_dropped"] == 5
    assert {r["outcome"] for r in record["attempts"]} == {"deferred"}
