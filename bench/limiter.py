"""The rate limit, measured: three ``python -m alchemy run`` processes share one queue with
``rate_limit`` starts per ``rate_period`` and a backlog that outlasts the run; the starts are
read back from the queue's events stream (``started`` entries, each process's clock).

Two figures: the most starts in any closed window of ``rate_period`` (opening at a start) as
a percentage of the limit (the promise: at most 100% without ``rate_burst``), and the steady
throughput as a percentage of ``rate_limit / rate_period`` (the promise: at least 95%).

``python -m bench.limiter`` runs it alone.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from bench.common import delete_prefix
from bench.engine import worker_env

QUEUE: Final = "limited"
HANDLER: Final = "alchemy.handlers.noop:handle"
REPO: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class LimiterResult:
    limit: int
    period: float
    processes: int
    starts: int
    worst_window: int  # most starts in any closed window of one period
    steady_per_s: float  # starts per second after the first one

    @property
    def worst_window_pct(self) -> float:
        return 100.0 * self.worst_window / self.limit

    @property
    def throughput_pct(self) -> float:
        return 100.0 * self.steady_per_s / (self.limit / self.period)

    def to_json(self) -> dict[str, float]:
        return {
            "limiter_worst_window_pct": round(self.worst_window_pct, 1),
            "limiter_throughput_pct": round(self.throughput_pct, 1),
        }


def most_in_a_window(times: list[float], width: float) -> int:
    ordered = sorted(times)
    return max(
        (bisect.bisect_right(ordered, t + width) - i for i, t in enumerate(ordered)), default=0
    )


def _config(url: str, prefix: str, name: str, limit: int, period: float) -> str:
    return f"""\
[redis]
url = {json.dumps(url)}
prefix = {json.dumps(prefix)}

[worker]
name = "{name}"
host = "bench"
shutdown_timeout = 5.0

[log]
level = "warning"
format = "json"

[queues.{QUEUE}]
handler = "{HANDLER}"
concurrency = 4
rate_limit = {limit}
rate_period = {period}
"""


async def measure_limiter(
    url: str,
    *,
    limit: int = 50,
    period: float = 2.0,
    seconds: float = 12.0,
    processes: int = 3,
) -> LimiterResult:
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    redis = Redis.from_url(url)
    keys = QueueKeys(prefix, QUEUE)
    backlog = int(limit / period * seconds * 2) + limit
    procs: list[asyncio.subprocess.Process] = []
    try:
        with tempfile.TemporaryDirectory(prefix="alchemy-limiter-") as workdir:
            await redis.set(keys.paused, 1)
            producer = Producer(redis, prefix=prefix)
            for n in range(backlog):
                await producer.enqueue(QUEUE, {}, id=f"lim-{n}")
            for n in range(processes):
                path = Path(workdir) / f"w{n}.toml"
                path.write_text(_config(url, prefix, f"lim{n}", limit, period))
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *[sys.executable, "-m", "alchemy", "--config", str(path), "run"],
                        cwd=REPO,
                        env=worker_env(),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            await _wait_registered(redis, keys, processes)
            await redis.delete(keys.paused)
            await asyncio.sleep(seconds)
            await redis.set(keys.paused, 1)
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(keys.events))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
        await delete_prefix(redis, prefix)
        await redis.aclose()
    times = sorted(
        int(fields[b"ts"]) / 1000 for _, fields in entries if fields.get(b"event") == b"started"
    )
    if len(times) < 3 or len(times) >= backlog:
        raise RuntimeError(f"{len(times)} starts of a {backlog}-job backlog")
    steady = (len(times) - 2) / (times[-1] - times[1])  # after the first start
    return LimiterResult(
        limit, period, processes, len(times), most_in_a_window(times, period), steady
    )


async def _wait_registered(redis: Redis, keys: QueueKeys, count: int) -> None:
    deadline = time.monotonic() + 30
    while await redis.zcard(keys.consumers) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the limiter's workers did not start")
        await asyncio.sleep(0.05)


def main() -> int:
    result = asyncio.run(measure_limiter("redis://127.0.0.1:6379/0"))
    print(
        f"limiter: {result.processes} processes, {result.limit} per {result.period:g}s:"
        f" worst window {result.worst_window} ({result.worst_window_pct:.0f}% of the limit),"
        f" steady {result.steady_per_s:.2f}/s ({result.throughput_pct:.1f}% of the limit),"
        f" {result.starts} starts"
    )
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
