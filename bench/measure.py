"""The drain and pickup measurements of three systems and the run that ties them together:
the floor (bench/floor.py), the engine (bench/engine.py) and, when node and npm are there,
BullMQ (bench/bullmq.py), on the same Redis, drains interleaved round by round."""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from bench import bullmq, floor, timer
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


LOG_LINES_WITHIN_S: Final = 5.0  # for a worker's last log lines to reach its log file

LINES: Final = ("drain", "pickup", "limiter", "handler", "dashboards", "lifecycle")


@dataclass(frozen=True, slots=True)
class Settings:
    url: str
    jobs: int
    concurrency: int
    rate: float
    seconds: float
    rounds: int
    ops: bool = True  # the events stream and job records on, as shipped
    lines: frozenset[str] = frozenset(LINES)  # what to measure (``--only``)
    peer: bool = True  # BullMQ too, when node and npm are there (``--without-bullmq``)


@dataclass(frozen=True, slots=True)
class Drain:
    jobs_per_s: float
    cpu_us_per_job: float  # CPU time of the consumer process per job


@dataclass(frozen=True, slots=True)
class Pickup:
    """Pickup times (ms) of jobs fed at a steady rate into an idle consumer."""

    times_ms: list[float]

    @property
    def p50_ms(self) -> float:
        return percentile(self.times_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.times_ms, 99)


def median_rate(rounds: list[Drain]) -> float:
    return statistics.median(d.jobs_per_s for d in rounds) if rounds else math.nan


def median_cpu(rounds: list[Drain]) -> float:
    return statistics.median(d.cpu_us_per_job for d in rounds) if rounds else math.nan


@dataclass(frozen=True, slots=True)
class Side:
    """What was measured of one system: its drains (in order), its pickup, its peak RSS."""

    rounds: list[Drain] = field(default_factory=list)
    pickup: Pickup | None = None
    rss_mb: float = math.nan

    @property
    def jobs_per_s(self) -> float:
        return median_rate(self.rounds)

    @property
    def cpu_us(self) -> float:
        return median_cpu(self.rounds)


@dataclass(frozen=True, slots=True)
class Results:
    engine: Side
    floor: Side
    bullmq: Side | None  # None: not measured (``peer_note`` says why)
    peer_note: str | None = None
    # How late a bare sleep of one feeding interval woke, in rounds beside the pickup ones:
    # the machine's own floor for pickup latency (None: the pickup line did not run)
    wake: Pickup | None = None

    @property
    def ratio(self) -> float:
        """Engine ÷ floor, drain medians."""
        return self.engine.jobs_per_s / self.floor.jobs_per_s if self.floor.rounds else math.nan

    @property
    def bullmq_ratio(self) -> float:
        """Engine ÷ BullMQ, drain medians (nan when BullMQ did not run)."""
        if self.bullmq is None or not self.bullmq.rounds or not self.engine.rounds:
            return math.nan
        return self.engine.jobs_per_s / self.bullmq.jobs_per_s

    @property
    def per_round_bullmq_ratios(self) -> list[float]:
        if self.bullmq is None:
            return []
        pairs = zip(self.engine.rounds, self.bullmq.rounds, strict=False)
        return [e.jobs_per_s / b.jobs_per_s for e, b in pairs]

    def to_json(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.engine.rounds:
            out["engine_jobs_per_s"] = round(self.engine.jobs_per_s, 1)
            out["floor_jobs_per_s"] = round(self.floor.jobs_per_s, 1)
            out["ratio"] = round(self.ratio, 3)
        if self.engine.pickup is not None:
            out["p50_ms"] = round(self.engine.pickup.p50_ms, 3)
            out["p99_ms"] = round(self.engine.pickup.p99_ms, 3)
        if self.wake is not None:
            out["wake_late_p99_ms"] = round(self.wake.p99_ms, 3)
        if not math.isnan(self.engine.rss_mb):
            out["rss_mb"] = round(self.engine.rss_mb, 1)
        bull = self.bullmq
        if bull is not None:
            if bull.rounds:
                out["bullmq_jobs_per_s"] = round(bull.jobs_per_s, 1)
                out["bullmq_ratio"] = round(self.bullmq_ratio, 3)
            if bull.pickup is not None:
                out["bullmq_p50_ms"] = round(bull.pickup.p50_ms, 3)
                out["bullmq_p99_ms"] = round(bull.pickup.p99_ms, 3)
            if not math.isnan(bull.rss_mb):
                out["bullmq_rss_mb"] = round(bull.rss_mb, 1)
        return out


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


async def measure_floor_pickup(
    redis: Redis, s: Settings, prefix: str, seconds: float
) -> list[float]:
    """The control for the engine's pickup latency: the floor, fed the same way."""
    keys = QueueKeys(prefix, "floor")
    proc = floor.start(s.url, keys.wait, keys.processing("floor"), s.concurrency, REPO, pickup=True)
    try:
        assert proc.stdout is not None
        if (await asyncio.to_thread(proc.stdout.readline)).strip() != "ready":
            raise RuntimeError("the floor did not start")
        count = await feed(redis, prefix, "floor", s.rate, seconds)
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


async def measure_pickup(
    redis: Redis, s: Settings, worker: EngineWorker, seconds: float
) -> list[float]:
    """Feed the idle worker; return each job's ``pickup_ms`` from its job_finished line
    (the worker's pickup time minus the producer's ``enqueued_at``)."""
    before = len(worker.finished("lat-"))
    count = await feed(redis, worker.keys.prefix, QUEUE, s.rate, seconds)
    await wait_empty(redis, worker.keys.wait, worker.processing, within=30)
    # The job_finished lines are written by the worker's log thread a moment after the
    # acknowledgement that emptied the lists: wait for the last ones.
    deadline = time.monotonic() + LOG_LINES_WITHIN_S
    while True:
        fresh = worker.finished("lat-")[before:]
        picked = [float(e["pickup_ms"]) for e in fresh if "pickup_ms" in e]
        if len(picked) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    if len(picked) != count:
        raise RuntimeError(f"{len(picked)} of {count} latency jobs logged a pickup time")
    return picked


async def start_peer(s: Settings) -> tuple[bullmq.BullWorker | None, str | None]:
    """The BullMQ worker, started, or None and why not."""
    if not s.peer:
        return None, "BullMQ left out (--without-bullmq)"
    if not s.lines & {"drain", "pickup"}:
        return None, "BullMQ not measured (neither the drain nor the pickup line runs)"
    why = bullmq.missing()
    if why is not None:
        return None, why
    await asyncio.to_thread(bullmq.prepare)
    peer = bullmq.BullWorker(s.url, f"bench-bullmq-{uuid.uuid4().hex[:10]}", s.concurrency)
    await peer.start()
    return peer, None


async def run(s: Settings) -> Results:
    """Drain rounds alternate floor, engine and BullMQ, so a busy neighbour slows all alike;
    then each one's pickup latency, fed the same way, and each worker's peak RSS."""
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    redis = Redis.from_url(s.url)
    floor_rounds: list[Drain] = []
    engine_rounds: list[Drain] = []
    bull_rounds: list[Drain] = []
    floor_pickup = engine_pickup = bull_pickup = wake = None
    peer, note = await start_peer(s)
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
                if "drain" in s.lines:
                    for _ in range(s.rounds):
                        floor_rounds.append(await measure_floor(redis, s, prefix))
                        engine_rounds.append(await measure_engine_drain(redis, s, worker))
                        if peer is not None:
                            drained = await peer.drain(s.jobs)
                            bull_rounds.append(Drain(drained.jobs_per_s, drained.cpu_us_per_job))
                if "pickup" in s.lines:
                    if worker.proc is None:
                        worker.start(REPO)
                        await worker.wait_started()
                    # Interleaved in rounds that share the feeding time, so a busy
                    # neighbour slows all three alike.
                    floor_times: list[float] = []
                    engine_times: list[float] = []
                    bull_times: list[float] = []
                    wake_late: list[float] = []
                    each = s.seconds / max(1, s.rounds)
                    for _ in range(max(1, s.rounds)):
                        wake_late += await timer.measure(1 / s.rate, each, REPO)
                        floor_times += await measure_floor_pickup(redis, s, prefix, each)
                        engine_times += await measure_pickup(redis, s, worker, each)
                        if peer is not None:
                            bull_times += await peer.pickup(s.rate, each)
                    floor_pickup, engine_pickup = Pickup(floor_times), Pickup(engine_times)
                    wake = Pickup(wake_late)
                    if peer is not None:
                        bull_pickup = Pickup(bull_times)
                rss_mb = worker.peak_rss_mb() if worker.proc is not None else math.nan
                bull_rss = peer.peak_rss_mb() if peer is not None else math.nan
            finally:
                code = await asyncio.to_thread(worker.stop)
                if peer is not None:
                    await peer.stop()
            if worker.proc is not None and code != 0:
                raise RuntimeError(f"worker exited {code}")
        bull_side = None if peer is None else Side(bull_rounds, bull_pickup, bull_rss)
        return Results(
            engine=Side(engine_rounds, engine_pickup, rss_mb),
            floor=Side(floor_rounds, floor_pickup),
            bullmq=bull_side,
            peer_note=note,
            wake=wake,
        )
    finally:
        await delete_prefix(redis, prefix)
        if peer is not None:
            await delete_prefix(redis, peer.prefix)
        await redis.aclose()
