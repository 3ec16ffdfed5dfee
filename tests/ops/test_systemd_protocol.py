"""The sd_notify pieces on their own: reading the environment, addresses, sending."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from alchemy.config import WorkerConfig
from alchemy.errors import ConfigError
from alchemy.logs import register_secrets
from alchemy.ops.systemd import (
    MAX_STATUS,
    Notify,
    NotifySettings,
    SystemdNotifier,
    check_watchdog,
    socket_address,
    status_field,
)

PID = 4242


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, NotifySettings()),
        ({"WATCHDOG_USEC": "1000000"}, NotifySettings()),  # no socket: no watchdog either
        ({"NOTIFY_SOCKET": "/run/n"}, NotifySettings("/run/n", 0)),
        ({"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "30000000"}, NotifySettings("@n", 30_000_000)),
        (
            {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(PID)},
            NotifySettings("/run/n", 30_000_000),
        ),
        (
            {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
            NotifySettings("/run/n", 0),
        ),
        ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "soon"}, NotifySettings("/run/n", 0)),
        ({"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "0"}, NotifySettings("/run/n", 0)),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, NotifySettings()),  # not supported: disabled
    ],
)
def test_settings_from_environ(environ: dict[str, str], expected: NotifySettings) -> None:
    assert NotifySettings.from_environ(environ, PID) == expected


def test_watchdog_interval_is_half_the_period() -> None:
    assert NotifySettings("/run/n", 30_000_000).watchdog_interval == 15.0
    assert NotifySettings("/run/n", 0).watchdog_interval == 0


def test_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/123") == (
        b"\0/org/freedesktop/systemd1/notify/123"
    )


def test_status_field_is_one_short_line_without_secrets() -> None:
    register_secrets(["hunter2-secret"])
    try:
        field = status_field("waiting for postgres: bad password hunter2-secret\nmore")
    finally:
        register_secrets([])
    assert field == "STATUS=waiting for postgres: bad password *** more"
    long = status_field("x" * 1000)
    assert len(long) == len("STATUS=") + MAX_STATUS
    assert long.endswith("…")


@pytest.fixture
def socket_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="alchemy-sd-")
    path = os.path.join(directory, "notify.sock")
    yield path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(directory)


def test_send_never_raises_and_logs_a_failure_once(socket_path: str) -> None:
    notify = Notify(socket_path)
    try:
        with capture_logs() as logs:
            assert not notify.send("READY=1")  # nobody listens yet
            assert not notify.send("WATCHDOG=1")
        assert [e["event"] for e in logs] == ["systemd_notify_failed"]
        assert logs[0]["message"] == "READY=1"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(socket_path)
            assert notify.send("READY=1", "STATUS=ready")
            assert receiver.recv(100) == b"READY=1\nSTATUS=ready"
    finally:
        notify.close()


async def test_without_notify_socket_the_extension_does_nothing() -> None:
    notifier = SystemdNotifier(NotifySettings())
    running: object = None  # never looked at
    with capture_logs() as logs:
        await notifier.start(running)  # type: ignore[arg-type]
        await notifier.stopping()
        await notifier.close()
    assert logs == []


@pytest.mark.parametrize(
    ("usec", "ttl", "interval", "refused"),
    [
        (5_000_000, 8.0, 2.0, False),  # the shipped units and defaults: 5 < 8 - 2
        (6_000_000, 8.0, 2.0, True),  # the heartbeat may expire as the watchdog fires
        (30_000_000, 8.0, 2.0, True),  # the old WatchdogSec=30
        (30_000_000, 40.0, 5.0, False),
        (0, 8.0, 2.0, False),  # no watchdog
    ],
)
def test_the_watchdog_must_fire_before_the_heartbeat_can_expire(
    usec: int, ttl: float, interval: float, refused: bool
) -> None:
    worker = WorkerConfig(heartbeat_ttl=ttl, heartbeat_interval=interval)
    environ = {"WATCHDOG_USEC": str(usec)}
    if not refused:
        check_watchdog(environ, PID, worker)
        return
    with pytest.raises(ConfigError) as caught:
        check_watchdog(environ, PID, worker)
    assert caught.value.key == "worker.heartbeat_ttl"
    assert f"WatchdogSec={usec / 1_000_000:g}s" in str(caught.value)


def test_a_watchdog_meant_for_another_process_is_not_checked() -> None:
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    check_watchdog(environ, PID, WorkerConfig())
