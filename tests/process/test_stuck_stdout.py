"""Acceptance (issue 9, point 6): a worker whose stdout pipe is never read keeps its
heartbeat and finishes its jobs; the dropped-line count is exposed.

One real ``python -m alchemy run`` whose stdout is a pipe (64 KiB) and whose log buffer holds
100 lines. Phase 1: nobody reads the pipe while it logs a line for each of 3,000 jobs; the
jobs all finish, the heartbeat never lapses, /metrics counts the dropped lines. Phase 2: the
test reads the pipe; one ``log_lines_dropped`` line says how many were lost. Phase 3: nobody
reads again until the pipe is full, then SIGTERM: the process still exits 0 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import (
    REDIS_URL,
    REPO,
    build_config_dict,
    queue_table,
    to_toml,
    wait_for,
)
from tests.ports import free_port

QUEUE = "stuck"
HOST = "stuck-host"
IDENTITY = f"{HOST}:w1"
JOBS = 3000
MORE_JOBS = 1500
BUFFER_LINES = 100


@dataclass
class PipeReader:
    """Reads the worker's stdout while ``reading`` is set; leaves it full otherwise."""

    fd: int
    received: bytearray = field(default_factory=bytearray)
    reading: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.done.is_set():
            if not self.reading.wait(0.05):
                continue
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return
                self.received.extend(chunk)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in bytes(self.received).splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@pytest.fixture
def worker(tmp_path: Path, prefix: str) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    config = build_config_dict(
        prefix,
        queue_table(QUEUE, concurrency=8),
        {"host": HOST},
        http={"port": port},
    )
    config["log"]["buffer_lines"] = BUFFER_LINES
    config_path = tmp_path / "worker.toml"
    config_path.write_text(to_toml(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "ALCHEMY_TEST_REDIS_URL": REDIS_URL}
    for variable in (
        "REDIS_URL",
        "ALCHEMY_WORKER_NAME",
        "ALCHEMY_WORKER_HOST",
        "ALCHEMY_LOG_LEVEL",
    ):
        env.pop(variable, None)
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "alchemy", "--config", str(config_path), "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,  # read only when the test says so
            stderr=stderr,
        )
    try:
        yield process, port, stderr_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


class Heartbeat:
    """Polls the worker's heartbeat key every 50 ms; remembers any moment it was gone."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self.polls = 0
        self.lapses: list[int] = []

    async def watch(self) -> None:
        while True:
            pttl = await self.redis.pttl(self.key)
            self.polls += 1
            if pttl <= 0:
                self.lapses.append(pttl)
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(heartbeat: Heartbeat) -> AsyncIterator[Heartbeat]:
    task = asyncio.create_task(heartbeat.watch())
    try:
        yield heartbeat
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def dropped_total(http: aiohttp.ClientSession, port: int) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    match = re.search(r"^alchemy_log_lines_dropped_total (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def enqueue(redis: Redis, prefix: str, record: str, ids: range) -> None:
    producer = Producer(redis, prefix=prefix)
    for n in ids:
        await producer.enqueue(QUEUE, {"record": record}, id=f"job-{n}")


async def done_count_at_least(redis: Redis, key: str, n: int) -> bool:
    return await redis.llen(key) >= n


async def wait_exited_process(process: subprocess.Popen[bytes], within: float) -> int:
    await wait_for(lambda: process.poll() is not None, within=within, interval=0.02)
    return process.returncode


@pytest.mark.timeout(60)
async def test_a_worker_whose_stdout_is_never_read_keeps_working(
    redis: Redis, prefix: str, worker: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    process, port, stderr_path = worker
    assert process.stdout is not None
    keys = QueueKeys(prefix, QUEUE)
    record = f"{prefix}:rec"
    heartbeat = Heartbeat(redis, keys.heartbeat(IDENTITY))

    async def started() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {stderr_path.read_text()}")
        return await redis.pttl(heartbeat.key) > 0

    await wait_for(started, within=20, interval=0.05)
    reader = PipeReader(process.stdout.fileno())
    reader_thread = threading.Thread(target=reader.run, daemon=True)
    reader_thread.start()
    try:
        async with aiohttp.ClientSession() as http, watching(heartbeat):
            # Phase 1: nobody reads stdout.
            began = time.monotonic()
            await enqueue(redis, prefix, record, range(JOBS))
            await wait_for(lambda: done_count_at_least(redis, f"{record}:done", JOBS), within=30)
            stuck_for = time.monotonic() - began
            dropped = await dropped_total(http, port)
            assert dropped > JOBS / 2, dropped  # a pipe and 100 lines hold a few hundred
            assert heartbeat.polls > stuck_for / 0.05 / 4  # it did watch all along
            assert heartbeat.lapses == []

            # Phase 2: stdout is read again; a log_lines_dropped line tells what was lost.
            reader.reading.set()

            def told() -> list[dict[str, Any]]:
                return [e for e in reader.events() if e.get("event") == "log_lines_dropped"]

            await wait_for(told, within=10)
            await enqueue(redis, prefix, record, range(JOBS, JOBS + 1))
            await wait_for(
                lambda: any(e.get("job_id") == f"job-{JOBS}" for e in reader.events()),
                within=10,
            )
            notices = told()
            assert all(e["level"] == "warning" for e in notices)
            assert all("ts" in e for e in notices)
            # Usually exactly one; more only if the writer fell behind before the pipe filled.
            told_total = sum(e["dropped"] for e in notices)
            assert told_total == await dropped_total(http, port)

            # Phase 3: stuck again, then SIGTERM.
            reader.reading.clear()
            await asyncio.sleep(0.2)  # the reader's last select ends
            total = JOBS + 1 + MORE_JOBS
            await enqueue(redis, prefix, record, range(JOBS + 1, total))
            await wait_for(lambda: done_count_at_least(redis, f"{record}:done", total), within=30)

            async def dropping_again() -> bool:
                return await dropped_total(http, port) > told_total

            await wait_for(dropping_again, within=5)
            assert heartbeat.lapses == []
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        status = await wait_exited_process(process, within=10)
        exit_s = time.monotonic() - signalled
        assert status == 0, stderr_path.read_text()
        assert exit_s < 6, f"exited {exit_s:.1f}s after SIGTERM"  # 2 s for the stuck flush
    finally:
        reader.done.set()
        reader_thread.join(5)

    done = [json.loads(raw)["id"] for raw in await redis.lrange(f"{record}:done", 0, -1)]
    assert sorted(done) == sorted(f"job-{n}" for n in range(total))  # each exactly once
    errors = stderr_path.read_text()
    assert "Traceback" not in errors, errors
    assert "Fatal Python error" not in errors, errors  # no daemon thread holds stdout's lock
