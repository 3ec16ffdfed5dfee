"""A handler that does nothing: for smoke tests, benchmarks and checking a deployment."""

from __future__ import annotations

from alchemy.queue.job import Job


async def handle(job: Job) -> None:
    return None
