"""The real worker process tells systemd READY, STATUS, WATCHDOG and STOPPING.

Each test binds the datagram socket that systemd would, passes it in ``NOTIFY_SOCKET`` (and a
1 s watchdog in ``WATCHDOG_USEC``) to ``python -m alchemy run``, and reads what arrives.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import WorkerProcess, queue_table, wait_exited, wait_for, wait_started
from tests.ports import free_port

QUEUE = "notify"
SpawnWorker = Callable[..., WorkerProcess]


class NotifyListener:
    """The systemd side: a bound datagram socket; every message with its arrival time."""

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.setblocking(False)

    def attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def times(self, key: str) -> list[float]:
        return [t for t, fields in self.messages if key in fields]

    def statuses(self) -> list[str]:
        return [fields["STATUS"] for _, fields in self.messages if "STATUS" in fields]

    def first(self, key: str) -> dict[str, str]:
        return next(fields for _, fields in self.messages if key in fields)


@pytest.fixture
async def listener() -> AsyncIterator[NotifyListener]:
    # A short directory: a socket path must fit in 108 bytes.
    directory = tempfile.mkdtemp(prefix="alchemy-notify-")
    path = os.path.join(directory, "notify.sock")
    receiver = NotifyListener(path, path)
    receiver.attach()
    yield receiver
    receiver.close()
    os.unlink(path)
    os.rmdir(directory)


def notify_env(listener: NotifyListener, watchdog_usec: int = 1_000_000) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(watchdog_usec)}


def events(process: WorkerProcess) -> list[str]:
    return [str(e.get("event")) for e in process.events()]


async def test_ready_status_watchdog_and_stopping(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker, listener: NotifyListener
) -> None:
    process = spawn_worker(
        queue_table(QUEUE, concurrency=2), {"shutdown_timeout": 5.0}, env=notify_env(listener)
    )
    await wait_started(process)
    await wait_for(lambda: listener.times("READY"), within=10)
    ready = listener.first("READY")
    assert ready == {"READY": "1", "STATUS": f"ready; jobs in flight: {QUEUE} 0/2"}
    await wait_for(lambda: process.has_event("systemd_ready"), within=5)  # logs lag READY
    names = events(process)
    assert names.index("worker_started") < names.index("systemd_ready"), names

    # A job in flight shows in the next STATUS.
    record = f"{prefix}:rec"
    await redis.lpush(QueueKeys(prefix, QUEUE).wait, f'{{"record": "{record}", "sleep": 30}}')
    await wait_for(lambda: f"ready; jobs in flight: {QUEUE} 1/2" in listener.statuses())

    # Pings every half WATCHDOG_USEC, from the start on.
    await wait_for(lambda: len(listener.times("WATCHDOG")) >= 6, within=10)
    pings = listener.times("WATCHDOG")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.35 <= gap <= 0.8 for gap in gaps), gaps
    assert 0.45 <= sum(gaps) / len(gaps) <= 0.6, gaps

    signalled = time.monotonic()
    process.signal(signal.SIGTERM)
    await wait_for(lambda: listener.times("STOPPING"), within=5)
    stopping = listener.first("STOPPING")
    assert stopping == {"STOPPING": "1", "STATUS": f"stopping; jobs in flight: {QUEUE} 1/2"}
    assert listener.times("STOPPING")[0] - signalled < 1.0
    assert await wait_exited(process, within=15) == 0, process.events()

    # The drain lasted the 5 s grace (the job sleeps 30 s): the pings went on through it.
    assert any(t > signalled + 4 for t in listener.times("WATCHDOG"))
    assert len(listener.times("READY")) == 1
    assert len(listener.times("STOPPING")) == 1
    names = events(process)
    assert names.index("systemd_stopping") < names.index("worker_draining"), names


async def test_no_ready_while_postgres_does_not_answer(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker, listener: NotifyListener
) -> None:
    """The consumers run, but READY waits for PostgreSQL; a stop still reports STOPPING."""
    port = free_port()  # nothing listens on it
    process = spawn_worker(
        queue_table(QUEUE),
        env=notify_env(listener, watchdog_usec=0),
        database={"url": f"postgresql://postgres@127.0.0.1:{port}/postgres"},
    )
    await wait_started(process)
    await wait_for(lambda: any("waiting for postgres" in s for s in listener.statuses()))
    await asyncio.sleep(1.0)
    assert not listener.times("READY")
    assert not listener.times("WATCHDOG")  # WATCHDOG_USEC=0: no watchdog
    assert "systemd_not_ready" in events(process)

    process.signal(signal.SIGTERM)
    assert await wait_exited(process) == 0, process.events()
    assert listener.times("STOPPING")
    assert not listener.times("READY")


async def test_abstract_socket_and_watchdog_for_another_pid(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker
) -> None:
    """``@name`` is the abstract namespace; WATCHDOG_PID of another process: no pings."""
    name = f"alchemy-test-{prefix}"
    receiver = NotifyListener(f"@{name}", b"\0" + name.encode())
    try:
        receiver.attach()
        env = {**notify_env(receiver), "WATCHDOG_PID": "1"}
        process = spawn_worker(queue_table(QUEUE), env=env)
        await wait_started(process)
        await wait_for(lambda: receiver.times("READY"))
        await asyncio.sleep(1.2)
        assert not receiver.times("WATCHDOG")
        process.signal(signal.SIGTERM)
        assert await wait_exited(process) == 0
        assert receiver.times("STOPPING")
    finally:
        receiver.close()


async def test_without_notify_socket_nothing_changes(
    redis: Redis, prefix: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    record = f"{prefix}:rec"
    env = {"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "1000000"}
    process = spawn_worker(queue_table(QUEUE), env=env)
    await wait_started(process)
    await redis.lpush(QueueKeys(prefix, QUEUE).wait, f'{{"record": "{record}"}}')
    await wait_for(lambda: redis.llen(f"{record}:done"))
    process.signal(signal.SIGTERM)
    assert await wait_exited(process) == 0
    names = events(process)
    assert not [n for n in names if n.startswith("systemd")], names
    assert names[-1] == "worker_stopped"


async def test_a_watchdog_slower_than_the_heartbeat_stops_startup_with_exit_78(
    spawn_worker: SpawnWorker, listener: NotifyListener
) -> None:
    """The tests' workers beat every 0.5 s with a 2 s TTL: a 1.5 s watchdog could fire only
    after their jobs were recovered elsewhere."""
    process = spawn_worker(queue_table(QUEUE), env=notify_env(listener, watchdog_usec=1_500_000))
    assert await wait_exited(process, within=15) == 78
    output = process.log_path.read_text()
    assert "config error: worker.heartbeat_ttl: must be more than the systemd watchdog" in output
    assert not listener.times("READY")
