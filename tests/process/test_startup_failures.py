"""Startup against a Redis that is missing or refuses us."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import queue_table, wait_exited, wait_for
from tests.ports import free_port


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "right-password",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(10)


async def test_wrong_redis_password_stops_startup_with_exit_78(
    redis_with_password: int, spawn_worker: Any
) -> None:
    url = f"redis://:wrong-password-77@127.0.0.1:{redis_with_password}/0"
    worker = spawn_worker(queue_table("q"), env={"REDIS_URL": url})
    assert await wait_exited(worker, within=15) == 78
    output = worker.log_path.read_text()
    assert "config error: redis.url" in output
    assert "wrong-password-77" not in output


async def test_sigterm_while_waiting_for_redis_exits_at_once(spawn_worker: Any) -> None:
    worker = spawn_worker(queue_table("q"), env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    await wait_for(lambda: worker.has_event("redis_step_failing"), within=15)
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await wait_exited(worker, within=5) == 0
    assert time.monotonic() - sent < 3


async def test_an_http_port_in_use_stops_startup_before_any_job_is_taken(
    redis: Redis, prefix: str, spawn_worker: Any
) -> None:
    holder = socket.create_server(("127.0.0.1", free_port()))
    port = holder.getsockname()[1]
    try:
        producer = Producer(redis, prefix=prefix)
        job_id = await producer.enqueue("q", {"n": 1}, id="waits")
        worker = spawn_worker(queue_table("q"), http={"port": port})
        assert await wait_exited(worker, within=15) == 78
        output = worker.log_path.read_text()
        lines = [line for line in output.splitlines() if "config error" in line]
        assert lines == [
            f"alchemy: config error: http.port: cannot listen on 127.0.0.1:{port}: "
            "Address already in use"
        ], output
        assert not worker.has_event("worker_started")
        keys = QueueKeys(prefix, "q")
        assert [json.loads(item)["id"] for item in await redis.lrange(keys.wait, 0, -1)] == [job_id]
    finally:
        holder.close()
