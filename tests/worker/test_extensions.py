"""Extensions start after the consumers run, hear the stop before the drain, close last."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from alchemy.worker.supervisor import Running
from tests.conftest import queue_table, wait_for


class Lifecycle:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.running: Running | None = None

    async def start(self, running: Running) -> None:
        self.running = running
        self.calls.append("start")

    async def stopping(self) -> None:
        assert self.running is not None
        self.calls.append(f"stopping in_flight={self.running.in_flight()}")

    async def close(self) -> None:
        self.calls.append("close")


async def test_extension_lifecycle(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", concurrency=2))
    extension = Lifecycle()
    supervisor = run_worker(config, extensions=[extension])
    await wait_for(lambda: extension.calls == ["start"])
    assert extension.running is not None
    assert [c.name for c in extension.running.consumers] == ["q"]
    assert extension.running.identity == config.worker.identity
    assert await redis.zscore(f"{prefix}:{{q}}:consumers", config.worker.identity)
    supervisor.request_stop("test")
    assert await asyncio.wait_for(supervisor.task, 10) == 0
    assert extension.calls == ["start", "stopping in_flight=0", "close"]
