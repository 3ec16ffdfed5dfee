"""Handlers for the tests, steered by the job's own data.

Every handler records what it did in the test Redis (``ALCHEMY_TEST_REDIS_URL``) under the
key named by ``data["record"]``, so a test can read what happened from Redis even when the
handler ran in another process.

``scripted`` understands these data fields (all optional):
    record                  list key: one JSON line per start {"id","attempt","recoveries",
                            "pid","t","worker"} and "<record>:done" per finish
    sleep                   seconds to sleep
    sleep_first_run_only    sleep only while job.recoveries == 0
    sleep_until_attempt     sleep only while job.attempt < this
    ignore_cancel           catch CancelledError during the sleep and go on
    fail_until_attempt      raise while job.attempt < this (0 = never, -1 = always)
    error                   plain | permanent | retryable | rate_limited | timeout | leak_env
                            (default plain; leak_env puts os.environ[data["variable"]] in
                            the message)
    delay                   RetryableError delay
    retry_after             RateLimitedError retry_after
    crash_while_recoveries_below   SIGKILL our own process while job.recoveries < this
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

from redis.asyncio import Redis

from alchemy.errors import PermanentError, RateLimitedError, RetryableError
from alchemy.queue.job import Job

_clients: dict[int, Redis] = {}
_in_flight: dict[str, int] = {}


def test_redis() -> Redis:
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        url = os.environ.get("ALCHEMY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        client = Redis.from_url(url)
        _clients[loop_id] = client
    return client


async def record(key: str, job: Job, **extra: Any) -> None:
    entry = {
        "id": job.id,
        "attempt": job.attempt,
        "recoveries": job.recoveries,
        "pid": os.getpid(),
        "t": time.time(),
        "data": dict(job.data),
        **extra,
    }
    await test_redis().rpush(key, json.dumps(entry))


async def scripted(job: Job) -> None:
    data = job.data
    key = data.get("record")
    counter = f"{job.queue}:{key}"
    _in_flight[counter] = _in_flight.get(counter, 0) + 1
    try:
        if key:
            await record(key, job, in_flight=_in_flight[counter])
        limit = data.get("crash_while_recoveries_below")
        if limit is not None and job.recoveries < int(limit):
            os.kill(os.getpid(), signal.SIGKILL)
        sleep = float(data.get("sleep", 0))
        skip = (data.get("sleep_first_run_only") and job.recoveries > 0) or (
            "sleep_until_attempt" in data and job.attempt >= int(data["sleep_until_attempt"])
        )
        if sleep and not skip:
            try:
                await asyncio.sleep(sleep)
            except asyncio.CancelledError:
                if not data.get("ignore_cancel"):
                    raise
        until = int(data.get("fail_until_attempt", 0))
        if until == -1 or job.attempt < until:
            raise _error(data)
        if key:
            await record(f"{key}:done", job)
    finally:
        _in_flight[counter] -= 1


def _error(data: Any) -> Exception:
    kind = data.get("error", "plain")
    if kind == "leak_env":  # an error whose message carries a secret from the environment
        return RuntimeError(f"upstream said: bad key {os.environ[data['variable']]}")
    if kind == "permanent":
        return PermanentError("told to fail for good")
    if kind == "retryable":
        return RetryableError("told to fail for now", delay=data.get("delay"))
    if kind == "rate_limited":
        return RateLimitedError(float(data["retry_after"]))
    if kind == "timeout":  # a library's own timeout, not the queue's
        return TimeoutError("told to time out")
    return ValueError("told to fail")


async def record_only(job: Job) -> None:
    """Cheapest recording handler: RPUSH the job id onto ``data["record"]``."""
    await test_redis().rpush(job.data["record"], job.id)


async def rate_limited_once(job: Job) -> None:
    """``scripted``, except that a job naming ``data["once_key"]`` raises
    ``RateLimitedError(data["retry_after"])`` the first time it runs: the first run SETNXes
    that key in the test Redis, so the retry (same attempt number) runs as ``scripted``.
    The limited run is recorded into ``data["record"]`` with ``"limited": true``."""
    once_key = job.data.get("once_key")
    if once_key and await test_redis().set(once_key, "1", nx=True):
        key = job.data.get("record")
        if key:
            await record(key, job, limited=True)
        raise RateLimitedError(float(job.data["retry_after"]))
    await scripted(job)


remembered: list[Job] = []


async def remember(job: Job) -> None:
    """Append the Job to ``remembered``, for tests that run the worker in their own process
    and want to see exactly what the handler was given."""
    remembered.append(job)


async def raises_cancelled(job: Job) -> None:
    """Raises CancelledError itself (as when an inner task it awaited was cancelled) on its
    first attempt; records the attempt into ``data["record"]`` every time."""
    await record(job.data["record"], job)
    if job.attempt == 1:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner


async def end_task(job: Job) -> None:
    """A test hook: cancel this process's background task named ``data["task"]`` (e.g.
    ``reconcile:q``), as if it had ended by a bug; then finish like ``scripted``."""
    for task in asyncio.all_tasks():
        if task.get_name() == job.data["task"]:
            task.cancel()
    await scripted(job)


async def reporting(job: Job) -> Any:
    """Reports ``data["steps"]``, a list of ``[fraction, step, seconds to sleep after]``,
    through ``job.progress``; raises ``ValueError`` while ``job.attempt <
    data["fail_until_attempt"]`` (after its steps); returns ``data["returns"]``. With
    ``data["chatty"]`` it reports each step that many times in a row before sleeping."""
    data = job.data
    for fraction, step, pause in data.get("steps", []):
        for _ in range(int(data.get("chatty", 1))):
            await job.progress(fraction, step=step)
        if pause:
            await asyncio.sleep(pause)
    if job.attempt < int(data.get("fail_until_attempt", 0)):
        raise ValueError(f"told to fail on attempt {job.attempt}")
    return data.get("returns")
