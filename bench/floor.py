"""The floor of the pattern: the least a Python consumer of a Redis list with a processing
list can do per job. ``coroutines`` coroutines, each on a connection of its own, loop
BRPOPLPUSH wait→processing, then LREM processing. No decoding, no logging, no batching.

Run as its own process (``python -m bench.floor URL WAIT PROCESSING COROUTINES [--pickup]``)
so it has an event loop and a CPU of its own, like the engine's worker. It prints ``ready``
once every connection is up, stops when the wait list has stayed empty for one block
timeout, and then prints one JSON line: ``{"taken": n, "cpu_s": s, "pickup_ms": [...]}``. Only with
``--pickup`` does it read each job's ``enqueued_at`` (after taking the time) to report how
long the job waited, as a control for the engine's pickup latency.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

BLOCK_SECONDS = 1.0


class Floor:
    def __init__(self, url: str, wait: str, processing: str, *, pickup: bool) -> None:
        self.url = url
        self.wait = wait
        self.processing = processing
        self.pickup = pickup
        self.taken = 0
        self.picked: list[tuple[float, bytes]] = []
        self.cpu_seconds = 0.0  # from "ready" to the end

    async def connect(self) -> Redis:
        client = Redis.from_url(self.url, single_connection_client=True)
        await client.ping()
        return client

    async def consume(self, client: Redis) -> None:
        try:
            while True:
                item = await client.brpoplpush(self.wait, self.processing, BLOCK_SECONDS)
                if item is None:
                    return
                if self.pickup:
                    self.picked.append((time.time() * 1000, item))
                await client.lrem(self.processing, 1, item)
                self.taken += 1
        finally:
            await client.aclose()

    def pickup_ms(self) -> list[float]:
        return [at - json.loads(item)["enqueued_at"] for at, item in self.picked]


async def run(url: str, wait: str, processing: str, coroutines: int, *, pickup: bool) -> Floor:
    floor = Floor(url, wait, processing, pickup=pickup)
    clients = [await floor.connect() for _ in range(coroutines)]
    print("ready", flush=True)
    began = time.process_time()
    await asyncio.gather(*(floor.consume(client) for client in clients))
    floor.cpu_seconds = time.process_time() - began
    return floor


def start(
    url: str, wait: str, processing: str, coroutines: int, cwd: Path, *, pickup: bool = False
) -> subprocess.Popen[str]:
    """The floor as a subprocess; read ``ready``, then the result line, from its stdout."""
    args = [sys.executable, "-m", "bench.floor", url, wait, processing, str(coroutines)]
    return subprocess.Popen(
        [*args, "--pickup"] if pickup else args, cwd=cwd, stdout=subprocess.PIPE, text=True
    )


async def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"the floor exited {proc.returncode}")
    line: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return line


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def main(argv: list[str]) -> int:
    pickup = "--pickup" in argv
    url, wait, processing, coroutines = [a for a in argv if a != "--pickup"]
    floor = asyncio.run(run(url, wait, processing, int(coroutines), pickup=pickup))
    result = {"taken": floor.taken, "cpu_s": floor.cpu_seconds, "pickup_ms": floor.pickup_ms()}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
