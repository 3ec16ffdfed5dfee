"""What open dashboards cost, measured two ways:

1. the engine drain (as in ``bench/measure.py``: one worker, no-op jobs) with no dashboard
   and with 10 connected (each following ``/api/live`` and reading the dead-letter page
   and its groups every 2 s, as a page with the dead letters open does at most), in
   alternating rounds of one run: the ratio of the medians (the aim: within 5%);
2. the Redis work of one refresh of a page showing a queue, its dead letters (a first and
   a deep page, their groups) and one entry, against dead-letter lists of 1,000 and
   1,000,000 entries: commands and microseconds from ``INFO commandstats``, on a private
   ``redis-server`` started for it (so nobody else's commands are counted).

``python -m bench.dashboards`` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.http.app import create_app
from alchemy.http.dashboard import GROUPS_TTL
from alchemy.http.deps import Deps
from alchemy.http.overview import OverviewCache
from alchemy.queue.keys import QueueKeys
from bench.common import delete_prefix
from bench.engine import QUEUE, EngineWorker
from bench.measure import Drain, Settings, measure_engine_drain

DASHBOARDS: Final = 10
PAGE_EVERY: Final = 2.0  # seconds between two reads of the dead page by one dashboard
FILL_BATCH: Final = 5000
SIZES: Final = (1_000, 1_000_000)


@dataclass(frozen=True, slots=True)
class RefreshCost:
    dead: int  # entries in the dead-letter list
    commands: int  # Redis commands (inside scripts too) of one refresh
    usec: int  # Redis time of them, microseconds
    by_command: dict[str, int]


@dataclass(frozen=True, slots=True)
class DashboardResult:
    without: list[Drain]
    with_dashboards: list[Drain]
    messages: int  # live messages the dashboards received
    costs: list[RefreshCost]

    @property
    def ratio(self) -> float:
        with_ = statistics.median(d.jobs_per_s for d in self.with_dashboards)
        return with_ / statistics.median(d.jobs_per_s for d in self.without)

    def lines(self) -> list[str]:
        def jobs(rounds: list[Drain]) -> str:
            return ", ".join(f"{d.jobs_per_s:,.0f}" for d in rounds)

        out = [
            f"drain, no dashboard: median of {jobs(self.without)} jobs/s",
            f"drain, {DASHBOARDS} dashboards live: median of {jobs(self.with_dashboards)} jobs/s"
            f" ({self.messages} live messages received)",
            f"ratio with / without: {self.ratio:.3f} (aim: >= 0.95)",
        ]
        for cost in self.costs:
            out.append(
                f"one page refresh, {cost.dead:,} dead: {cost.commands} Redis commands,"
                f" {cost.usec} us of Redis time ({_top(cost.by_command)})"
            )
        return out

    def to_json(self) -> dict[str, float]:
        body: dict[str, float] = {"dashboards_drain_ratio": round(self.ratio, 3)}
        for cost in self.costs:
            body[f"refresh_commands_{cost.dead}"] = cost.commands
            body[f"refresh_usec_{cost.dead}"] = cost.usec
        return body


def _top(by_command: dict[str, int]) -> str:
    ranked = sorted(by_command.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {usec} us" for name, usec in ranked[:4])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- 1. the drain with dashboards connected ---------------------------------------------------
async def _dashboard(base: str, stop: asyncio.Event, received: list[int]) -> None:
    """One open page: its live stream, and its dead-letter page read every 2 s."""
    async with aiohttp.ClientSession() as http:

        async def follow() -> None:
            async with http.get(base + "api/live") as response:
                async for line in response.content:
                    if line.startswith(b"event:"):
                        received[0] += 1

        reader = asyncio.create_task(follow())
        try:
            while not stop.is_set():
                for path in ("dead?limit=50&preview=300", "dead/groups"):
                    async with http.get(f"{base}api/queues/{QUEUE}/{path}") as response:
                        await response.read()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PAGE_EVERY)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def measure_drains(settings: Settings) -> tuple[list[Drain], list[Drain], int]:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    redis = Redis.from_url(settings.url)
    port = _free_port()
    without: list[Drain] = []
    with_dashboards: list[Drain] = []
    received = [0]
    try:
        with tempfile.TemporaryDirectory(prefix="alchemy-bench-") as workdir:
            worker = EngineWorker(
                url=settings.url,
                prefix=prefix,
                concurrency=settings.concurrency,
                workdir=Path(workdir),
            )
            with worker.config_path.open("a") as config:
                config.write(f"\n[http]\nport = {port}\ncheck_database = false\n")
            try:
                for _ in range(settings.rounds):
                    without.append(await measure_engine_drain(redis, settings, worker))
                    stop = asyncio.Event()
                    base = f"http://127.0.0.1:{port}/"
                    pages = [
                        asyncio.create_task(_dashboard(base, stop, received))
                        for _ in range(DASHBOARDS)
                    ]
                    try:
                        with_dashboards.append(await measure_engine_drain(redis, settings, worker))
                    finally:
                        stop.set()
                        await asyncio.gather(*pages, return_exceptions=True)
            finally:
                code = await asyncio.to_thread(worker.stop)
            if code != 0:
                raise RuntimeError(f"worker exited {code}")
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    return without, with_dashboards, received[0]


# -- 2. the Redis work of one refresh ---------------------------------------------------------
def _dead_entry(n: int) -> bytes:
    return (
        b'{"v":1,"queue":"bench","id":"d-%d","reason":"max_attempts","error":{"type":"%s",'
        b'"message":"told to fail"},"attempts":3,"recoveries":0,"first_attempt_ms":1,'
        b'"dead_at_ms":1,"job":"{\\"id\\":\\"d-%d\\",\\"n\\":%d}"}'
        % (n, b"KeyError" if n % 3 else b"ValueError", n, n)
    )


async def _fill(redis: Redis, key: str, first: int, end: int) -> None:
    """Entries ``d-first`` to ``d-(end - 1)``, pushed in that order (the last is the newest)."""
    for start in range(first, end, FILL_BATCH):
        items = [_dead_entry(n) for n in range(start, min(end, start + FILL_BATCH))]
        await redis.lpush(key, *items)


async def _stats(redis: Redis) -> dict[str, tuple[int, int]]:
    info: dict[str, Any] = await redis.info("commandstats")
    out = {}
    for name, value in info.items():
        command = name.removeprefix("cmdstat_")
        if command != "info" and not command.startswith("config"):
            out[command] = (int(value["calls"]), int(value["usec"]))
    return out


async def _refresh_cost(redis: Redis, client: TestClient[Any, Any], dead: int) -> RefreshCost:
    """One refresh of a page with the dead letters of QUEUE open, as app.js makes it: the
    overview, the first dead page, a deep one, the groups, and one entry."""
    deep = dead // 2
    paths = [
        "api/dashboard",
        f"api/queues/{QUEUE}/dead?offset=0&limit=50&preview=300",
        f"api/queues/{QUEUE}/dead?offset={deep}&limit=50&preview=300",
        f"api/queues/{QUEUE}/dead/groups",
        f"api/queues/{QUEUE}/dead/entry?id=d-{dead - 1 - deep}&offset={deep}&total={dead}",
    ]
    await asyncio.sleep(GROUPS_TTL)  # past the listener's cache of the groups: pay for them
    await redis.config_resetstat()
    for path in paths:
        response = await client.get("/" + path)
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {await response.text()}")
        await response.read()
    after = await _stats(redis)
    return RefreshCost(
        dead,
        sum(calls for calls, _ in after.values()),
        sum(usec for _, usec in after.values()),
        {name: usec for name, (_, usec) in after.items()},
    )


def _private_redis(port: int) -> subprocess.Popen[bytes]:
    """A redis-server of our own (no persistence), stopped by its pid at the end."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    return subprocess.Popen([*argv, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)


async def measure_refreshes() -> list[RefreshCost]:
    port = _free_port()
    server = _private_redis(port)
    redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(Exception):
                if await redis.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not start")
            await asyncio.sleep(0.05)
        config = parse_config(
            {
                "redis": {"url": f"redis://127.0.0.1:{port}/0", "prefix": "bench"},
                "queues": {QUEUE: {"handler": "alchemy.handlers.noop:handle"}},
                "http": {"check_database": False},
            }
        )
        overview = OverviewCache(redis, "bench", [QUEUE], ttl=0.0)
        app = create_app(Deps(config, redis, "bench:refresh", overview))
        costs = []
        async with TestClient(TestServer(app)) as client:
            dead_key = QueueKeys("bench", QUEUE).dead
            filled = 0
            for size in SIZES:
                await _fill(redis, dead_key, filled, size)
                filled = size
                await _refresh_cost(redis, client, size)  # warm: scripts loaded, pool open
                costs.append(await _refresh_cost(redis, client, size))
        return costs
    finally:
        await redis.aclose()
        server.terminate()
        server.wait(10)


async def measure_dashboards(settings: Settings) -> DashboardResult:
    without, with_dashboards, received = await measure_drains(settings)
    return DashboardResult(without, with_dashboards, received, await measure_refreshes())


def main() -> int:
    from bench.__main__ import parse_args

    result = asyncio.run(measure_dashboards(parse_args(sys.argv[1:])[0]))
    print("\n".join(result.lines()))
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
