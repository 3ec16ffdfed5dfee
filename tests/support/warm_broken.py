"""A handler module whose ``warm`` hook fails; its jobs record their id."""

from __future__ import annotations

from alchemy.queue.job import Job
from tests.support.handlers import test_redis


async def warm() -> None:
    raise RuntimeError("told to fail")


async def handle(job: Job) -> None:
    await test_redis().rpush(str(job.data["record"]), str(job.id))
