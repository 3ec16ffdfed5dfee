"""The recovery line: how long after a worker is killed with SIGKILL its jobs are back, with
the shipped heartbeat timings (``[worker]`` left at its defaults).

Run alone: ``python -m bench.recovery [--rounds 3]``.

Each round: a victim process starts and takes 3 jobs that hold it (they sleep on their
first run, finish at once when recovered); then a rescuer process serving the same queue
starts and waits out its first ``heartbeat_ttl`` (a process sweeps others only after Redis
has answered it that long). The victim is killed with SIGKILL, at a random moment between
two of its heartbeats; the clock runs from the kill to the moment its processing list is
empty (the rescuer's sweep moved the jobs back: "back") and to the moment the rescuer has
logged all 3 finished ("done").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from redis.asyncio import Redis

from alchemy.config import WorkerConfig
from alchemy.queue.job import Job
from alchemy.queue.producer import Producer
from bench.common import delete_prefix
from bench.engine import EngineWorker
from bench.handler import REPO

QUEUE: Final = "recovery"
JOBS: Final = 3
GOAL_S: Final = 5.0


async def hold(job: Job) -> None:
    """The bench's handler: sleep ``data["sleep"]`` on a job's first run only."""
    if job.recoveries == 0:
        await asyncio.sleep(float(job.data.get("sleep", 0)))


def config_toml(*, url: str, prefix: str, name: str) -> str:
    return f"""\
[redis]
url = {json.dumps(url)}
prefix = {json.dumps(prefix)}

[worker]
name = "{name}"
host = "bench"
shutdown_timeout = 5.0

[log]
format = "json"
level = "info"

[queues.{QUEUE}]
handler = "bench.recovery:hold"
concurrency = {JOBS}
"""


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    back_s: list[float]  # SIGKILL -> the victim's processing list empty, per round
    done_s: list[float]  # SIGKILL -> the rescuer logged every job finished, per round

    def lines(self) -> list[str]:
        worst = max(self.back_s)
        verdict = "ok" if worst <= GOAL_S else "MISSED"
        timings = WorkerConfig()
        rounds = ", ".join(f"{s:.2f}" for s in self.back_s)
        return [
            f"{'recovery after SIGKILL, back':<34}{statistics.median(self.back_s):>14.2f} s  "
            f"{'<= ' + format(GOAL_S, 'g') + ' s':<10}{verdict}; worst {worst:.2f} s of {rounds}",
            f"{'  ... and run again elsewhere':<34}{statistics.median(self.done_s):>14.2f} s  "
            f"{'':<10}heartbeat {timings.heartbeat_interval:g} s, TTL"
            f" {timings.heartbeat_ttl:g} s, sweep every {timings.recovery_interval:g} s",
        ]

    def to_json(self) -> dict[str, float]:
        return {
            "recovery_s": round(statistics.median(self.back_s), 2),
            "recovery_worst_s": round(max(self.back_s), 2),
        }


def worker(url: str, prefix: str, name: str, workdir: Path) -> EngineWorker:
    directory = workdir / name
    directory.mkdir()
    return EngineWorker(
        url=url,
        prefix=prefix,
        concurrency=JOBS,
        workdir=directory,
        queue=QUEUE,
        config_text=config_toml(url=url, prefix=prefix, name=name),
    )


async def poll_until(check: Callable[[], Awaitable[bool]], interval: float) -> None:
    while True:
        if await check():
            return
        await asyncio.sleep(interval)


async def taken(redis: Redis, processing: str) -> bool:
    return int(await redis.llen(processing)) >= JOBS


async def emptied(redis: Redis, processing: str) -> bool:
    return int(await redis.llen(processing)) == 0


async def finished(rescuer: EngineWorker, prefix: str) -> bool:
    return rescuer.completed(prefix) >= JOBS


async def one_round(
    redis: Redis, url: str, prefix: str, workdir: Path, n: int
) -> tuple[float, float]:
    victim = worker(url, prefix, f"victim-{n}", workdir)
    rescuer = worker(url, prefix, f"rescuer-{n}", workdir)
    try:
        victim.start(REPO)
        await victim.wait_started()
        producer = Producer(redis, prefix=prefix)
        for i in range(JOBS):
            await producer.enqueue(QUEUE, {"sleep": 600}, id=f"r{n}-{i}")
        await poll_until(lambda: taken(redis, victim.processing), 0.01)
        rescuer.start(REPO)
        await rescuer.wait_started()
        await asyncio.sleep(WorkerConfig().heartbeat_ttl + 0.5)  # its first sweep may run
        # at a random moment between two of the victim's heartbeats
        await asyncio.sleep(random.uniform(0, WorkerConfig().heartbeat_interval))
        killed = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        await poll_until(lambda: emptied(redis, victim.processing), 0.005)
        back = time.monotonic() - killed
        await poll_until(lambda: finished(rescuer, f"r{n}-"), 0.01)
        return back, time.monotonic() - killed
    finally:
        await asyncio.to_thread(victim.stop)
        await asyncio.to_thread(rescuer.stop)


async def measure_recovery(url: str, rounds: int) -> RecoveryResult:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    redis = Redis.from_url(url)
    back: list[float] = []
    done: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="alchemy-bench-recovery-") as workdir:
            for n in range(rounds):
                b, d = await one_round(redis, url, prefix, Path(workdir), n)
                back.append(b)
                done.append(d)
    finally:
        await delete_prefix(redis, prefix)
        await redis.aclose()
    return RecoveryResult(back, done)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = asyncio.run(measure_recovery(args.redis_url, args.rounds))
    print("\n".join(result.lines()))
    print(f"(took {time.monotonic() - started:.1f}s)")
    print(json.dumps(result.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
