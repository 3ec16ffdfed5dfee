"""Observers see every transition of a job, recoveries and hold-backs."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import rate_guard
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import plant_dying_job, queue_table, wait_for


class Recorder:
    def __init__(self) -> None:
        self.jobs: list[JobEvent] = []
        self.held_back: list[tuple[str, str, int]] = []

    def on_job(self, event: JobEvent) -> None:
        self.jobs.append(event)

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        self.held_back.append((queue, why, wait_ms))


class Broken:
    def on_job(self, event: JobEvent) -> None:
        raise RuntimeError("observer bug")

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        raise RuntimeError("observer bug")


async def test_observer_sees_each_transition(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", backoff_initial=0.05, backoff_jitter=0.0, max_attempts=2))
    keys = QueueKeys(prefix, "q")
    flaky = {"id": "flaky", "record": f"{prefix}:r", "fail_until_attempt": 2, "enqueued_at": 1}
    doomed = {"id": "doomed", "fail_until_attempt": -1, "error": "permanent"}
    for job in (flaky, doomed):
        await redis.lpush(keys.wait, json.dumps(job))
    await redis.lpush(keys.wait, b"not json")
    # Leftovers of an earlier run of this identity are recovered at start.
    identity = config.worker.identity
    await redis.lpush(keys.processing(identity), json.dumps({"id": "left"}))
    # ... one of them for the last time it may.
    deaths = await plant_dying_job(redis, config, "q", {"id": "killer"})
    recorder = Recorder()
    run_worker(config, observers=[Broken(), recorder])
    await wait_for(lambda: sum(e.transition is Transition.DEAD for e in recorder.jobs) == 3)
    for job_id in ("left", "flaky"):
        await wait_for(lambda j=job_id: _completed(recorder, j))
    by_id: dict[str | None, list[str]] = {}
    for event in recorder.jobs:
        by_id.setdefault(event.job_id, []).append(str(event.transition))
    assert by_id["flaky"] == ["started", "retrying", "started", "completed"]
    assert by_id["doomed"] == ["started", "dead"]
    assert by_id[None] == ["dead"]  # the unreadable item
    assert by_id["left"] == ["recovered", "started", "completed"]
    assert by_id["killer"] == ["dead"]
    recovered = next(e for e in recorder.jobs if e.job_id == "left")
    assert (recovered.worker, recovered.dead_worker, recovered.attempt) == (identity, identity, 1)
    assert recovered.error is not None
    assert recovered.error.type == "ProcessDied"
    poisoned = next(e for e in recorder.jobs if e.job_id == "killer")
    assert (poisoned.reason, poisoned.dead_worker) == ("poison", identity)
    assert poisoned.error is not None
    assert f"died {deaths + 1} times" in poisoned.error.message
    flaky_start = next(e for e in recorder.jobs if e.job_id == "flaky")
    assert flaky_start.pickup_s is not None
    assert flaky_start.pickup_s > 0
    retrying = next(e for e in recorder.jobs if e.transition is Transition.RETRYING)
    assert retrying.error is not None
    assert retrying.error.type == "ValueError"
    assert retrying.duration_s is not None


async def test_observer_hears_about_throttling(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", rate_limit=1, rate_period=60.0, concurrency=2))
    keys = QueueKeys(prefix, "q")
    # One starts, one is scheduled for the next token (a minute away), the third is held back.
    for n in range(3):
        await redis.lpush(keys.wait, json.dumps({"id": f"t{n}"}))
    recorder = Recorder()
    run_worker(config, observers=[recorder])
    await wait_for(lambda: recorder.held_back)
    queue, why, wait_ms = recorder.held_back[0]
    assert (queue, why) == ("q", "throttled")
    assert 0 < wait_ms <= 60_000 * (1 + rate_guard(60.0)) + 1  # a token a minute, and the guard


def _completed(recorder: Recorder, job_id: str) -> bool:
    return any(e.job_id == job_id and e.transition is Transition.COMPLETED for e in recorder.jobs)
