"""50,000 no-op jobs across 3 worker processes while /metrics and the admin API of every
process are polled every 100 ms: no job is lost, none runs twice without a reason, and no
request gets an error.

How jobs are counted: every job has an id (``load-N``) and every completion is an entry
``event=completed`` in the queue's events stream (capped here above the 100,000 entries the
run writes). Delivery is at least once, so a job may run twice only after a process was
taken for dead (its jobs recovered): the test requires every id completed at least once, and
more than once only if the stream shows a recovery. The processes' own counters
(``alchemy_jobs_completed_total`` summed over the three /metrics) must agree with the stream.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import WorkerProcess, wait_for, wait_started
from tests.ports import free_port

JOBS = 50_000
PROCESSES = 3
QUEUE = "load"
TOKEN = "load-test-token-0123456789"
POLL_EVERY = 0.1


@dataclass
class Polls:
    count: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    rounds: Counter[int] = field(default_factory=Counter)  # per port: rounds of every path


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def poll(http: aiohttp.ClientSession, ports: list[int], polls: Polls) -> None:
    """Every process, each by a poller of its own so a slow one delays no other."""
    await asyncio.gather(*(poll_one(http, port, polls) for port in ports))


async def poll_one(http: aiohttp.ClientSession, port: int, polls: Polls) -> None:
    """Every 100 ms: /metrics, /healthz, /readyz, the queue list, the dead-letter list and
    a job lookup (200 or 404 are both answers; anything else is not)."""
    expected = {"/api/queues/load/jobs/": {200, 404}}
    while True:
        started = time.monotonic()
        job = f"load-{random.randrange(JOBS)}"
        for path in (
            "/metrics",
            "/healthz",
            "/readyz",
            "/api/queues",
            f"/api/queues/{QUEUE}/dead?limit=10",
            f"/api/queues/{QUEUE}/jobs/{job}",
        ):
            ok_statuses = next((v for k, v in expected.items() if path.startswith(k)), {200})
            t0 = time.monotonic()
            try:
                # Job data (dead entries, a job) needs the token once one is set.
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
                    await response.read()
                    if response.status not in ok_statuses:
                        polls.errors.append(f"{port}{path}: {response.status}")
            except Exception as exc:
                polls.errors.append(f"{port}{path}: {type(exc).__name__}: {exc}")
            polls.slowest_s = max(polls.slowest_s, time.monotonic() - t0)
            polls.count += 1
            polls.by_path[path.split("?")[0].rsplit("/", 1)[0] or path] += 1
        polls.rounds[port] += 1
        await asyncio.sleep(max(0.0, POLL_EVERY - (time.monotonic() - started)))


async def completed_events(redis: Redis, key: str) -> tuple[Counter[str], int]:
    """Completions per job id in the stream, and the number of recovery entries."""
    done: Counter[str] = Counter()
    recoveries = 0
    last = "-"
    while True:
        chunk = await redis.xrange(key, min=last, max="+", count=10_000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return done, recoveries
        for _, fields in chunk:
            event = fields[b"event"]
            if event == b"completed":
                done[fields[b"job_id"].decode()] += 1
            elif event == b"recovered":
                recoveries += 1
        last = chunk[-1][0].decode()


@pytest.mark.load
@pytest.mark.timeout(300)
async def test_50000_jobs_3_processes_polled_every_100ms(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    keys = QueueKeys(prefix, QUEUE)
    ports = [free_port() for _ in range(PROCESSES)]
    workers = [
        spawn_worker(
            {QUEUE: {"handler": "alchemy.handlers.noop:handle", "concurrency": 10}},
            {
                "name": f"load{n}",
                "heartbeat_interval": 2.0,
                "heartbeat_ttl": 8.0,
                "recovery_interval": 2.0,
            },
            http={"port": port, "admin_token": TOKEN},
            events={"enabled": True, "max_length": 250_000},
            records={"enabled": True},
        )
        for n, port in enumerate(ports)
    ]
    for worker in workers:
        await wait_started(worker, within=30)
    polls = Polls()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        poller = asyncio.create_task(poll(http, ports, polls))
        began = time.monotonic()
        for start in range(0, JOBS, 1000):
            batch = [b'{"id":"load-%d"}' % n for n in range(start, min(JOBS, start + 1000))]
            await redis.lpush(keys.wait, *batch)

        async def all_completed() -> bool:
            total = 0.0
            for port in ports:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                total += metric_sum(text, "alchemy_jobs_completed_total")
            return total >= JOBS

        await wait_for(all_completed, within=240, interval=0.2)
        elapsed = time.monotonic() - began
        await asyncio.sleep(0.3)  # let the last events batch land (written every ~10 ms)
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)

        counters: dict[str, float] = Counter()
        for port in ports:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            for name in (
                "alchemy_jobs_started_total",
                "alchemy_jobs_completed_total",
                "alchemy_jobs_failed_total",
                "alchemy_jobs_dead_total",
            ):
                counters[name] += metric_sum(text, name)

        async def settled() -> Any:
            # The admin API reads Redis at most once a second.
            async with http.get(f"http://127.0.0.1:{ports[0]}/api/queues/{QUEUE}") as response:
                queue = await response.json()
            return queue if queue["wait"] == queue["processing"] == 0 else None

        queue: Any = await wait_for(settled, within=5, interval=0.2)

    done, recoveries = await completed_events(redis, keys.events)
    duplicates = sum(done.values()) - len(done)
    print(
        f"\nload: {JOBS} jobs, {PROCESSES} processes, {elapsed:.1f}s"
        f" ({JOBS / elapsed:,.0f} jobs/s); {polls.count} requests {dict(polls.by_path)},"
        f" rounds per process {sorted(polls.rounds.values())},"
        f" slowest {polls.slowest_s * 1000:.0f} ms; duplicates {duplicates},"
        f" recoveries {recoveries}"
    )
    assert polls.errors == []
    # It really polled, all along: every process, every path, at least once a second (every
    # 100 ms when requests are quick; a loaded machine answers each in tens of ms).
    assert len(polls.rounds) == PROCESSES
    assert min(polls.rounds.values()) >= int(elapsed), polls.rounds
    assert set(done) == {f"load-{n}" for n in range(JOBS)}  # no job lost
    assert duplicates == 0 or recoveries > 0  # a second run only after a recovery
    assert counters["alchemy_jobs_completed_total"] == sum(done.values())
    assert counters["alchemy_jobs_started_total"] == counters["alchemy_jobs_completed_total"]
    assert counters["alchemy_jobs_failed_total"] == counters["alchemy_jobs_dead_total"] == 0
    assert (queue["wait"], queue["processing"], queue["delayed"], queue["dead"]) == (0, 0, 0, 0)
    assert sum(1 for w in workers if w.proc.poll() is None) == PROCESSES
