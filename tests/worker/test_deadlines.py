"""One timer for all of a consumer's queue timeouts (alchemy/worker/deadlines.py)."""

from __future__ import annotations

import asyncio

from alchemy.worker.deadlines import Deadlines


async def test_each_job_times_out_at_its_own_deadline_and_a_finished_one_never() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, float]] = []
    started = loop.time()
    deadlines = Deadlines(0.2, lambda task: expired.append((task.get_name(), loop.time())))
    never = asyncio.Event()
    tasks = {}
    for name, gap in (("first", 0.0), ("finishes", 0.05), ("third", 0.05)):
        await asyncio.sleep(gap)
        tasks[name] = asyncio.create_task(never.wait(), name=name)
        deadlines.arm(loop, tasks[name])
    deadlines.disarm(tasks["finishes"])  # its handler returned in time
    await asyncio.sleep(0.45)
    assert [name for name, _ in expired] == ["first", "third"]
    first_at, third_at = expired[0][1] - started, expired[1][1] - started
    assert 0.2 <= first_at < 0.35
    assert 0.3 <= third_at < 0.45  # armed ~0.1 s after the first: its own deadline
    assert len(deadlines) == 0
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_when_the_oldest_finishes_early_the_next_still_expires_on_time() -> None:
    loop = asyncio.get_running_loop()
    expired: list[float] = []
    deadlines = Deadlines(0.15, lambda task: expired.append(loop.time()))
    never = asyncio.Event()
    oldest = asyncio.create_task(never.wait())
    deadlines.arm(loop, oldest)  # the timer is armed for this one
    await asyncio.sleep(0.1)
    later = asyncio.create_task(never.wait())
    armed_at = loop.time()
    deadlines.arm(loop, later)
    deadlines.disarm(oldest)
    await asyncio.sleep(0.3)
    assert len(expired) == 1
    assert 0.15 <= expired[0] - armed_at < 0.3
    later.cancel()
    oldest.cancel()
    await asyncio.gather(oldest, later, return_exceptions=True)


async def test_an_idle_consumer_keeps_no_timer_after_the_last_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05, lambda task: None)
    task = asyncio.create_task(asyncio.sleep(1))
    deadlines.arm(loop, task)
    deadlines.disarm(task)
    await asyncio.sleep(0.1)  # the timer fired, found nothing due, did not re-arm
    assert not deadlines.armed
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
