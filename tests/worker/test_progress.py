"""job.progress and the throttle behind it; a handler's result as capped JSON text."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from alchemy.queue.job import Job, Runner
from alchemy.worker.observer import JobEvent, Observers, Transition
from alchemy.worker.progress import MAX_RESULT_BYTES, ProgressThrottle, encode_result


class Heard:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def on_job(self, event: JobEvent) -> None:
        self.events.append(event)

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        return None

    def steps(self) -> list[tuple[float | None, str | None]]:
        return [(e.progress, e.step) for e in self.events]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job_with(throttle: ProgressThrottle, run: int = 1) -> Job:
    return Job("j", "q", 1, {}, runner=Runner("w", "inc", run), reporter=throttle)


async def test_a_new_step_goes_through_at_once_the_same_step_twice_a_second() -> None:
    heard, clock = Heard(), Clock()
    throttle = ProgressThrottle("q", "w", Observers([heard]), interval=0.05, clock=clock)
    job = job_with(throttle)
    await job.progress(0.1, step="loaded")
    for n in range(100):  # a chatty loop within one interval: nothing more goes out yet
        await job.progress(0.1 + n / 1000, step="loaded")
    assert heard.steps() == [(0.1, "loaded")]
    await job.progress(0.5, step="provider called")  # a new step: at once
    assert heard.steps()[-1] == (0.5, "provider called")
    await job.progress(0.6, step="provider called")
    assert len(heard.events) == 2
    clock.now += 0.05
    await asyncio.sleep(0.1)  # the interval is up: the latest value of the step is sent
    assert heard.steps()[-1] == (0.6, "provider called")
    assert len(heard.events) == 3
    event = heard.events[0]
    assert (event.transition, event.queue, event.job_id, event.worker) == (
        Transition.PROGRESS,
        "q",
        "j",
        "w",
    )
    assert throttle.finish(job) == (0.6, "provider called")
    assert throttle.finish(job) is None  # forgotten


async def test_finishing_a_run_cancels_its_pending_report() -> None:
    heard, clock = Heard(), Clock()
    throttle = ProgressThrottle("q", "w", Observers([heard]), interval=0.05, clock=clock)
    job, other = job_with(throttle, 1), job_with(throttle, 2)
    await job.progress(0.2, step="a")
    await job.progress(0.3, step="a")  # pending
    await other.progress(0.9, step="b")
    assert throttle.finish(job) == (0.3, "a")
    await asyncio.sleep(0.1)
    assert heard.steps() == [(0.2, "a"), (0.9, "b")]  # nothing late from the finished run


async def test_progress_is_clamped_and_must_be_a_number() -> None:
    heard = Heard()
    throttle = ProgressThrottle("q", "w", Observers([heard]))
    job = job_with(throttle)
    await job.progress(7, step="x" * 500)
    await job.progress(-1, step="y")
    assert heard.steps() == [(1.0, "x" * 200), (0.0, "y")]
    for bad in (math.nan, math.inf, "half", True):
        with pytest.raises(ValueError, match="progress must be a number"):
            await job.progress(bad)  # type: ignore[arg-type]
    # Outside the engine (a test calling a handler directly) it does nothing.
    await Job("j", "q", 1, {}).progress(0.5, step="alone")
    assert len(heard.events) == 2


def test_a_result_is_json_text_capped_with_a_marker() -> None:
    assert json.loads(encode_result({"content_id": 42, "url": "/m/1.png"})) == {
        "content_id": 42,
        "url": "/m/1.png",
    }
    assert encode_result([1, "two"]) == '[1,"two"]'
    big = encode_result({"text": "é" * MAX_RESULT_BYTES})
    marker = json.loads(big)
    assert marker["_truncated"] is True
    assert marker["bytes"] > MAX_RESULT_BYTES
    assert marker["head"].startswith('{"text":"éé')
    assert len(marker["head"]) == 1024
    assert len(big.encode()) < 4 * 1024
    odd = json.loads(encode_result({1, 2}))
    assert odd["_unserializable"].startswith("TypeError")
