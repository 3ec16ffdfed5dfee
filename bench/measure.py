"""The four measurements and the run that ties them together."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from bench import floor
from bench.common import (
    delete_prefix,
    feed,
    percentile,
    prefill,
    time_drain,
    wait_empty,
    wait_settled,
)
from bench.engine import QUEUE, EngineWorker

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    jobs: int
    concurrency: int
    rate: float
    seconds: float
    rounds: int
    ops: bool = True  # the events stream and job records on, as shipped


@dataclass(frozen=True, slots=True)
class Drain:
    jobs_per_s: float
    cpu_us_per_job: float  # CPU time of the consumer process per job


@dataclass(frozen=True, slots=True)
class Results:
    engine_rounds: list[Drain]  # in order
    floor_rounds: list[Drain]
    p50_ms: float
    p99_ms: float
    rss_mb: float
    latency_jobs: int
    floor_p50_ms: float  # the control: the floor's pickup latency, fed the same way
    floor_p99_ms: float

    @property
    def engine_jobs_per_s(self) -> float:
        return statistics.median(d.jobs_per_s for d in self.engine_rounds)

    @property
    def floor_jobs_per_s(self) -> float:
        return statistics.median(d.jobs_per_s for d in self.floor_rounds)

    @property
    def engine_cpu_us(self) -> float:
        return statistics.median(d.cpu_us_per_job for d in self.engine_rounds)

    @property
    def floor_cpu_us(self) -> float:
        return statistics.median(d.cpu_us_per_job for d in self.floor_rounds)

    @property
    def ratio(self) -> float:
        return self.engine_jobs_per_s / self.floor_jobs_per_s

    def to_json(self) -> dict[str, float]:
        return {
            "engine_jobs_per_s": round(self.engine_jobs_per_s, 1),
            "floor_jobs_per_s": round(self.floor_jobs_per_s, 1),
            "ratio": round(self.ratio, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "rss_mb": round(self.rss_mb, 1),
        }


async def measure_floor(redis: Redis, s: Settings, prefix: str) -> Drain:
    keys = QueueKeys(prefix, "floor")
    wait, processing = keys.wait, keys.processing("floor")
    await prefill(redis, wait, s.jobs)
    proc = floor.start(s.url, wait, processing, s.concurrency, REPO)
    try:
        seconds = await time_drain(redis, wait, processing, s.jobs)
        result = await floor.result(proc)
    finally:
        floor.stop(proc)
    if result["taken"] != s.jobs:
        raise RuntimeError(f"the floor took {result['taken']} of {s.jobs} jobs")
    return Drain(s.jobs / seconds, result["cpu_s"] / s.jobs * 1e6)


async def measure_floor_pickup(redis: Redis, s: Settings, prefix: str) -> list[float]:
    """The control for the engine's pickup latency: the floor, fed the same way."""
    keys = QueueKeys(prefix, "floor")
    proc = floor.start(s.url, keys.wait, keys.processing("floor"), s.concurrency, REPO, pickup=True)
    try:
        assert proc.stdout is not None
        if (await asyncio.to_thread(proc.stdout.readline)).strip() != "ready":
            raise RuntimeError("the floor did not start")
        count = await feed(redis, prefix, "floor", s.rate, s.seconds)
        await wait_empty(redis, keys.wait, keys.processing("floor"), within=30)
        result = await floor.result(proc)
    finally:
        floor.stop(proc)
    picked: list[float] = result["pickup_ms"]
    if len(picked) != count:
        raise RuntimeError(f"the floor reported {len(picked)} of {count} pickup times")
    return picked


async def measure_engine_drain(redis: Redis, s: Settings, worker: EngineWorker) -> Drain:
    """The queue is paused while the worker starts (the first time) and the backlog is
    written; timed from the first pickup after resuming until the wait and processing lists
    are both empty."""
    keys = worker.keys
    await redis.set(keys.paused, 1)
    if worker.proc is None:
        worker.start(REPO)
    before = worker.completed("drain-")
    await prefill(redis, keys.wait, s.jobs)
    await worker.wait_started()
    # An idle worker's blocking fetch may take one job before it sees the pause; it puts
    # that job back at once.
    await wait_settled(redis, keys.wait, worker.processing, s.jobs)
    cpu_before = worker.cpu_seconds()
    await redis.delete(keys.paused)
    seconds = await time_drain(redis, keys.wait, worker.processing, s.jobs)
    cpu = worker.cpu_seconds() - cpu_before
    completed = worker.completed("drain-") - before
    if completed != s.jobs:
        raise RuntimeError(f"engine completed {completed} of {s.jobs} jobs")
    return Drain(s.jobs / seconds, cpu / s.jobs * 1e6)


async def measure_pickup(redis: Redis, s: Settings, worker: EngineWorker) -> list[float]:
    """Feed the idle worker; return each job's ``pickup_ms`` from its job_finished line
    (the worker's pickup time minus the producer's ``enqueued_at``)."""
    count = await feed(redis, worker.keys.prefix, QUEUE, s.rate, s.seconds)
    await wait_empty(redis, worker.keys.wait, worker.processing, within=30)
    picked = [float(e["pickup_ms"]) for e in worker.finished("lat-") if "pickup_ms" in e]
    if len(picked) != count:
        raise RuntimeError(f"{len(picked)} of {count} latency jobs logged a pickup time")
    return picked


async def run(s: Settings) -> Results:
    """Drain rounds alternate floor and engine, so a busy neighbour slows both alike."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    redis = Redis.from_url(s.url)
    floor_rounds: list[Drain] = []
    engine_rounds: list[Drain] = []
    try:
        with tempfile.TemporaryDirectory(prefix="alchemy-bench-") as workdir:
            worker = EngineWorker(
                url=s.url,
                prefix=prefix,
                concurrency=s.concurrency,
                workdir=Path(workdir),
                ops=s.ops,
            )
            try:
                for _ in range(s.rounds):
                    floor_rounds.append(await measure_floor(redis, s, prefix))
                    engine_rounds.append(await measure_engine_drain(redis, s, worker))
                floor_picked = await measure_floor_pickup(redis, s, prefix)
                picked = await measure_pickup(redis, s, worker)
                rss_mb = worker.peak_rss_mb()
            finally:
                code = await asyncio.to_thread(worker.stop)
            if code != 0:
                raise RuntimeError(f"worker exited {code}")
        return Results(
            engine_rounds=engine_rounds,
            floor_rounds=floor_rounds,
            p50_ms=percentile(picked, 50),
            p99_ms=percentile(picked, 99),
            rss_mb=rss_mb,
            latency_jobs=len(picked),
            floor_p50_ms=percentile(floor_picked, 50),
            floor_p99_ms=percentile(floor_picked, 99),
        )
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
