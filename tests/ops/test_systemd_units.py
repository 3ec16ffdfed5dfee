"""The unit files in systemd/: they pass ``systemd-analyze verify`` and ``security``, carry
the settings the operations guide promises, and the template's command line really runs one
queue under its own identity.

The shipped units name /opt/alchemy and /etc/alchemy; each test copies them to a temporary
directory with those paths pointing at this checkout, its Python and temporary files.
``systemd-analyze`` comes from Debian's systemd package (``make tools`` installs it).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from alchemy.config import WorkerConfig, load_config
from alchemy.queue.keys import QueueKeys
from alchemy.worker.supervisor import DRAIN_REDIS_GRACE
from tests.conftest import REDIS_URL, REPO, build_config_dict, to_toml, wait_for
from tests.ops.test_systemd_notify import NotifyListener

UNITS = REPO / "systemd"
UNIT_NAMES = ("alchemy.service", "alchemy@.service")
ENV_EXAMPLE = UNITS / "alchemy.env.example"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is missing: run `make tools` (as root it installs Debian's "
            "systemd package) or apt-get install systemd"
        )
    return found


@dataclass(frozen=True)
class Unit:
    """A unit file as (section, key, value) entries, in order; keys may repeat."""

    entries: tuple[tuple[str, str, str], ...]

    @classmethod
    def read(cls, path: Path) -> Unit:
        entries, section = [], ""
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
        return cls(tuple(entries))

    def all(self, key: str) -> list[str]:
        return [value for _, k, value in self.entries if k == key]

    def one(self, key: str) -> str:
        values = self.all(key)
        assert len(values) == 1, f"{key}: {values}"
        return values[0]


def seconds(value: str) -> float:
    """A systemd time span as written in these units (``45``, ``45s``, ``2min``)."""
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.rstrip("s"))


@dataclass(frozen=True)
class Installed:
    directory: Path
    config: Path
    env_file: Path


@pytest.fixture
def installed(tmp_path: Path, prefix: str) -> Installed:
    """The units with their paths pointing here, a config and an env file from the example."""
    config = tmp_path / "config.toml"
    queues = {name: {"handler": "alchemy.handlers.noop:handle"} for name in ("research", "other")}
    config.write_text(to_toml(build_config_dict(prefix, queues)))
    env_file = tmp_path / "alchemy.env"
    env_file.write_text(
        ENV_EXAMPLE.read_text()
        .replace("redis://:CHANGE-ME@127.0.0.1:6379/0", REDIS_URL)
        .replace("postgresql://alchemy:CHANGE-ME@127.0.0.1:5432/alchemy", DATABASE_URL)
    )
    directory = tmp_path / "units"
    directory.mkdir()
    for name in UNIT_NAMES:
        text = (
            (UNITS / name)
            .read_text()
            .replace("/opt/alchemy/.venv/bin/python", sys.executable)
            .replace("/opt/alchemy", str(REPO))
            .replace("/etc/alchemy/config.toml", str(config))
            .replace("/etc/alchemy/alchemy.env", str(env_file))
        )
        (directory / name).write_text(text)
    return Installed(directory, config, env_file)


@pytest.mark.parametrize(
    "name", ["alchemy.service", "alchemy@.service", "alchemy@research.service"]
)
def test_systemd_analyze_verify(installed: Installed, name: str) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(installed.directory / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    # verify exits 0 on an unknown key or an unparsable value; it only prints a warning.
    # Lines about other units (redis-server.service on a machine that has it) do not count.
    ours = [line for line in output.splitlines() if "alchemy" in line]
    assert result.returncode == 0, output
    assert not ours, output


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_hardening_exposure_at_most_2(installed: Installed, name: str) -> None:
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            str(installed.directory / name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_carry_the_promised_settings(name: str) -> None:
    unit = Unit.read(UNITS / name)
    assert unit.one("Type") == "notify"
    assert unit.one("NotifyAccess") == "main"
    # The watchdog kills a wedged process before its heartbeat can expire (see
    # alchemy.ops.systemd.check_watchdog), with pings every WatchdogSec / 2.
    worker = WorkerConfig()
    assert 2 <= seconds(unit.one("WatchdogSec")) < worker.heartbeat_ttl - worker.heartbeat_interval
    grace = WorkerConfig().shutdown_timeout + DRAIN_REDIS_GRACE
    assert seconds(unit.one("TimeoutStopSec")) > grace
    assert unit.one("KillSignal") == "SIGTERM"
    assert unit.one("Restart") == "on-failure"
    assert unit.one("RestartPreventExitStatus") == "78"
    assert unit.one("EnvironmentFile") == "/etc/alchemy/alchemy.env"
    assert unit.one("User") == "alchemy"
    assert unit.one("ProtectSystem") == "strict"
    assert unit.one("ReadWritePaths") == "/var/lib/alchemy/media"
    assert unit.one("StateDirectory") == "alchemy alchemy/media"
    assert unit.one("RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert unit.all("SystemCallFilter")[0] == "@system-service"
    assert unit.one("SystemCallArchitectures") == "native"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert unit.one(key) == "yes", key
    exec_start = shlex.split(unit.one("ExecStart"))
    assert exec_start[:6] == [
        "/opt/alchemy/.venv/bin/python",
        "-m",
        "alchemy",
        "--config",
        "/etc/alchemy/config.toml",
        "run",
    ]
    if name == "alchemy@.service":
        assert exec_start[6:] == ["--queues", "%i"]
        assert "ALCHEMY_WORKER_NAME=%i" in unit.all("Environment")
    else:
        assert exec_start[6:] == []


def read_env_file(path: Path) -> dict[str, str]:
    """``EnvironmentFile=`` as these files use it: VARIABLE=value lines and comments."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_env_example_is_a_valid_override(tmp_path: Path) -> None:
    env = read_env_file(ENV_EXAMPLE)
    assert set(env) == {
        "REDIS_URL",
        "DATABASE_URL",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "ALCHEMY_FORBID_OFFLINE",
    }
    assert "ALCHEMY_WORKER_NAME" not in env
    config = load_config(None, env)
    assert config.redis.url.reveal() == env["REDIS_URL"]
    assert config.database.url.reveal() == env["DATABASE_URL"]
    assert config.providers.forbid_offline  # the production guard is on


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_units_turn_the_production_guard_on(name: str) -> None:
    assert "ALCHEMY_FORBID_OFFLINE=1" in Unit.read(UNITS / name).all("Environment")


def service_command(unit_path: Path, instance: str) -> tuple[list[str], dict[str, str], Path]:
    """What systemd would run for ``unit@instance``: argv, environment, working directory."""
    unit = Unit.read(unit_path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for assignments in unit.all("Environment"):
        for item in shlex.split(assignments.replace("%i", instance)):
            key, _, value = item.partition("=")
            env[key] = value
    env.update(read_env_file(Path(unit.one("EnvironmentFile"))))  # the file wins
    argv = shlex.split(unit.one("ExecStart").replace("%i", instance))
    return argv, env, Path(unit.one("WorkingDirectory"))


@pytest.fixture
async def listener() -> AsyncIterator[NotifyListener]:
    directory = tempfile.mkdtemp(prefix="alchemy-unit-")
    path = os.path.join(directory, "notify.sock")
    receiver = NotifyListener(path, path)
    receiver.attach()
    yield receiver
    receiver.close()
    shutil.rmtree(directory)


async def test_template_instance_serves_its_queue_as_its_own_identity(
    installed: Installed, redis: Redis, prefix: str, listener: NotifyListener, tmp_path: Path
) -> None:
    argv, env, cwd = service_command(installed.directory / "alchemy@.service", "research")
    env["NOTIFY_SOCKET"] = listener.address
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        await wait_for(lambda: listener.times("READY") or proc.returncode is not None, within=20)
        assert proc.returncode is None, log_path.read_text()
        assert listener.first("READY")["STATUS"] == "ready; jobs in flight: research 0/1"
        identity = f"{socket.gethostname()}:research"
        research, other = QueueKeys(prefix, "research"), QueueKeys(prefix, "other")
        assert await redis.zrange(research.consumers, 0, -1) == [identity.encode()]
        assert await redis.zcard(other.consumers) == 0
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0, log_path.read_text()
        assert listener.times("STOPPING")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
