"""The command line as an operator or a script uses it: real ``python -m alchemy``
subprocesses against the real Redis, under a private key prefix.

Every command has ``--help``; a failure exits non-zero with one line on standard error and
no traceback; ``--json`` prints what a script needs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.cli import COMMANDS, build_parser
from alchemy.config import ENV_OVERRIDES
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys
from tests.conftest import REPO, WorkerProcess, build_config_dict, to_toml, wait_started
from tests.ports import free_port

QUEUES = {
    "research": {"handler": "alchemy.handlers.noop:handle", "concurrency": 2},
    "broken": {"handler": "alchemy.handlers.does_not_exist:handle"},
}
SECRETS = {
    "REDIS_PASSWORD": "redis-secret-7f3a",
    "ANTHROPIC_API_KEY": "sk-ant-test-secret-9c1e",
}


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def failed_with(self, status: int, reason: str) -> bool:
        """Exit ``status``, one line on standard error containing ``reason``, no traceback."""
        assert self.status == status, self
        assert "Traceback" not in self.err, self.err
        assert len(self.err.splitlines()) == 1, self.err
        assert reason in self.err, self.err
        return True


Cli = Callable[..., Awaitable[Result]]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would change the config under test."""
    drop = {*ENV_OVERRIDES, "ALCHEMY_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


@pytest.fixture
def config_path(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(to_toml(build_config_dict(prefix, QUEUES)))
    return path


@pytest.fixture
def cli(config_path: Path) -> Cli:
    async def run(*args: str, env: dict[str, str] | None = None) -> Result:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alchemy",
            "--config",
            str(config_path),
            *args,
            cwd=REPO,
            env=clean_env(**(env or {})),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    return run


# --- help -----------------------------------------------------------------------------

HELP_PATHS = [
    [],
    ["run"],
    ["status"],
    ["dead"],
    ["dead", "list"],
    ["dead", "retry"],
    ["dead", "purge"],
    ["enqueue"],
    ["job"],
    ["pause"],
    ["resume"],
    ["check-config"],
    ["migrate"],
    ["spend"],
    ["budget"],
    ["budget", "show"],
    ["budget", "set"],
    ["media"],
    ["media", "url"],
    ["media", "copy-to-s3"],
]


def test_help_covers_every_command() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    assert set(commands) == set(COMMANDS)
    assert {tuple(p[:1]) for p in HELP_PATHS if p} == {(c,) for c in COMMANDS}


@pytest.mark.parametrize("path", HELP_PATHS, ids=lambda p: " ".join(p) or "alchemy")
async def test_every_command_has_help(cli: Cli, path: list[str]) -> None:
    result = await cli(*path, "--help")
    assert result.status == 0, result
    assert result.out.startswith(f"usage: alchemy {' '.join(path)}".rstrip()), result.out
    assert result.err == ""


async def test_usage_errors_exit_2(cli: Cli) -> None:
    assert (await cli("dead", "list")).status == 2
    result = await cli("dead", "list", "research", "--limit", "-1")
    assert result.status == 2
    assert "must be >= 0" in result.err


# --- JSON for scripts -----------------------------------------------------------------


async def test_enqueue_pause_resume_and_status_as_json(cli: Cli, redis: Redis, prefix: str) -> None:
    enqueued = await cli("enqueue", "research", '{"topic": "heat pumps"}', "--id", "b-1", "--json")
    assert enqueued.status == 0, enqueued
    assert enqueued.json() == {"queue": "research", "id": "b-1"}
    assert (await cli("enqueue", "research", "{}")).out.strip() != "b-1"  # a random id

    paused = await cli("pause", "research", "--json")
    assert paused.json() == {"queue": "research", "paused": True}
    status = (await cli("status", "--json")).json()
    research = next(q for q in status["queues"] if q["queue"] == "research")
    assert (research["wait"], research["paused"], research["paused_for_ms"]) == (2, True, -1)
    assert "yes" in next(
        line for line in (await cli("status")).out.splitlines() if line.startswith("research")
    )

    resumed = await cli("resume", "research", "--json")
    assert resumed.json() == {"queue": "research", "paused": False}
    status = (await cli("status", "--json")).json()
    assert not next(q for q in status["queues"] if q["queue"] == "research")["paused"]
    assert await redis.llen(QueueKeys(prefix, "research").wait) == 2


async def seed_dead(redis: Redis, prefix: str, *job_ids: str) -> None:
    for job_id in job_ids:
        entry = encode_dead_entry(
            queue="research",
            raw_job=json.dumps({"id": job_id, "n": 1}).encode(),
            reason=DeadReason.MAX_ATTEMPTS,
            error=ErrorInfo("ValueError", "told to fail"),
            meta=Meta(id=job_id, attempt=3),
            dead_at_ms=int(time.time() * 1000),
        )
        await redis.lpush(QueueKeys(prefix, "research").dead, entry)


async def test_dead_list_retry_purge_as_json(cli: Cli, redis: Redis, prefix: str) -> None:
    keys = QueueKeys(prefix, "research")
    await seed_dead(redis, prefix, "d-1", "d-2", "d-3")

    listed = await cli("dead", "list", "research", "--json")
    entries = [json.loads(line) for line in listed.out.splitlines()]
    assert [e["id"] for e in entries] == ["d-3", "d-2", "d-1"]
    assert entries[0]["reason"] == "max_attempts"
    assert entries[0]["error"] == {"type": "ValueError", "message": "told to fail"}
    paged = await cli("dead", "list", "research", "--json", "--offset", "1", "--limit", "1")
    assert [json.loads(line)["id"] for line in paged.out.splitlines()] == ["d-2"]

    retried = await cli("dead", "retry", "research", "--id", "d-2", "--json")
    assert retried.json() == {
        "queue": "research",
        "id": "d-2",
        "retried": 1,
        "skipped_truncated": 0,
    }
    assert await redis.llen(keys.wait) == 1
    purged = await cli("dead", "purge", "research", "--id", "d-1", "--json")
    assert purged.json() == {"queue": "research", "id": "d-1", "purged": 1}
    purged = await cli("dead", "purge", "research", "--all", "--json")
    assert purged.json() == {"queue": "research", "id": None, "purged": 1}
    assert await redis.llen(keys.dead) == 0
    assert (await cli("dead", "list", "research")).out == "no dead jobs in research\n"

    missing = await cli("dead", "retry", "research", "--id", "d-9", "--json")
    assert missing.json() == {
        "queue": "research",
        "id": "d-9",
        "retried": 0,
        "skipped_truncated": 0,
    }
    assert missing.failed_with(1, "no dead job with id 'd-9' in research")
    assert (await cli("dead", "purge", "research", "--id", "d-9")).failed_with(1, "'d-9'")


# A poison entry as the recovery script writes it for a job that is not UTF-8.
RAW_POISON_ENTRY = (
    b'{"v":1,"queue":"research","id":"p-1","reason":"poison","error":{"type":"ProcessDied",'
    b'"message":"died"},"attempts":1,"recoveries":3,"dead_at_ms":1,"job":"{\\"b\\":\\"\xff\\"}"}'
)


async def test_dead_entries_not_utf8_or_truncated(cli: Cli, redis: Redis, prefix: str) -> None:
    keys = QueueKeys(prefix, "research")
    big = b'{"id":"big","pad":"' + b"x" * 100_000 + b'"}'
    truncated = encode_dead_entry(
        queue="research",
        raw_job=big,
        reason=DeadReason.TOO_LARGE,
        error=ErrorInfo("BadJob", f"{len(big)} bytes > limit 1048576"),
        meta=Meta(id="big"),
        dead_at_ms=1,
    )
    await redis.lpush(keys.dead, RAW_POISON_ENTRY, truncated)

    listed = await cli("dead", "list", "research", "--json")
    assert listed.status == 0, listed
    first, second = (json.loads(line) for line in listed.out.splitlines())
    assert (first["truncated"], first["job_bytes"], len(first["job"])) == (True, len(big), 65_536)
    assert second["job_b64"] == base64.b64encode(b'{"b":"\xff"}').decode()
    assert "job" not in second
    text = (await cli("dead", "list", "research")).out
    assert f"[truncated: the first 64 KiB of {len(big)} bytes, sha256 " in text
    assert "<not UTF-8: base64 in job_b64 (--json)>" in text

    refused = await cli("dead", "retry", "research", "--id", "big")
    assert refused.failed_with(1, "dead job 'big' in research: a too_large entry keeps only")
    assert "skipped 1 truncated too_large entry" in refused.out
    every = await cli("dead", "retry", "research", "--all", "--json")
    assert every.json() == {"queue": "research", "id": None, "retried": 1, "skipped_truncated": 1}
    assert await redis.lrange(keys.wait, 0, -1) == [b'{"b":"\xff"}']
    assert await redis.lrange(keys.dead, 0, -1) == [truncated]


async def test_check_config_masks_secrets(cli: Cli, config_path: Path) -> None:
    env = {
        "REDIS_URL": f"redis://:{SECRETS['REDIS_PASSWORD']}@127.0.0.1:6379/0",
        "ANTHROPIC_API_KEY": SECRETS["ANTHROPIC_API_KEY"],
    }
    text = await cli("check-config", env=env)
    as_json = await cli("check-config", "--json", env=env)
    for result in (text, as_json):
        assert result.status == 1, result  # the broken queue's handler cannot be loaded
        for secret in SECRETS.values():
            assert secret not in result.out + result.err
    assert "redis.url = redis://:***@127.0.0.1:6379/0" in text.out
    assert "providers.anthropic_api_key = ***" in text.out
    assert "queues.broken: handler=alchemy.handlers.does_not_exist:handle" in text.out
    assert "UNAVAILABLE: cannot import alchemy.handlers.does_not_exist" in text.out

    report = as_json.json()
    assert report["source"] == str(config_path)
    assert (report["valid"], report["handlers_ok"]) == (True, False)
    config = report["config"]
    assert config["redis"]["url"] == "redis://:***@127.0.0.1:6379/0"
    assert config["providers"]["anthropic_api_key"] == "***"
    assert config["providers"]["openai_api_key"] == ""
    assert config["worker"]["identity"] == f"{socket.gethostname()}:w1"
    assert config["queues"]["research"]["concurrency"] == 2
    assert config["queues"]["research"]["handler_error"] is None
    assert "No module named" in config["queues"]["broken"]["handler_error"]


# One config per URL shape: (environment, settings for the file, secrets, lines shown).
URL_SHAPES: dict[str, tuple[dict[str, str], dict[str, Any], list[str], list[str]]] = {
    "redis acl and postgres password": (
        {
            "REDIS_URL": "rediss://acl-user:rediss-pw-41c2@redis.example:6380/0",
            "DATABASE_URL": "postgresql://bob:pg-pw%40-9d1e@db.example:5432/app",
        },
        {},
        ["rediss-pw-41c2", "pg-pw%40-9d1e", "pg-pw@-9d1e"],
        [
            "redis.url = rediss://acl-user:***@redis.example:6380/0",
            "database.url = postgresql://bob:***@db.example:5432/app",
        ],
    ),
    "unix socket and query passwords": (
        {
            "REDIS_URL": "unix:///run/redis.sock?db=0&password=unix-pw-77ab",
            "DATABASE_URL": "postgresql://bob@db.example/app?sslpassword=ssl-pw-5e6f",
        },
        {},
        ["unix-pw-77ab", "ssl-pw-5e6f"],
        [
            "redis.url = unix:///run/redis.sock?db=0&password=***",
            "database.url = postgresql://bob@db.example/app?sslpassword=***",
        ],
    ),
    "userinfo and keys in base URLs": (
        {},
        {
            "providers": {
                "anthropic_base_url": "https://proxy-user:proxy-pw-3a9b@proxy.example/a?key=q-k-8c",
                "openai_base_url": "https://bare-token-60d4@proxy.example/v1",
            }
        },
        ["proxy-user", "proxy-pw-3a9b", "q-k-8c", "bare-token-60d4"],
        [
            "providers.anthropic_base_url = https://***@proxy.example/a?key=***",
            "providers.openai_base_url = https://***@proxy.example/v1",
        ],
    ),
}


@pytest.mark.parametrize("shape", URL_SHAPES)
async def test_check_config_masks_every_url_secret(
    cli: Cli, tmp_path: Path, prefix: str, shape: str
) -> None:
    env, settings, secrets, lines = URL_SHAPES[shape]
    path = tmp_path / "shape.toml"
    path.write_text(to_toml(build_config_dict(prefix, QUEUES, **settings)))
    text = await cli("--config", str(path), "check-config", env=env)
    as_json = await cli("--config", str(path), "check-config", "--json", env=env)
    for result in (text, as_json):
        assert result.status == 1, result  # the broken queue's handler, as above
        for secret in secrets:
            assert secret not in result.out + result.err, (secret, result)
    for line in lines:
        assert line in text.out.splitlines(), (line, text.out)
    shown = as_json.json()["config"]
    for line in lines:
        key, _, value = line.partition(" = ")
        section, name = key.split(".")
        assert shown[section][name] == value


async def test_a_bad_url_setting_does_not_print_its_secret(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    bad = "https://u:spaced-pw-1f2e@proxy.example/v1 trailing"
    path.write_text(f'[providers]\nopenai_base_url = "{bad}"\n')
    result = await cli("--config", str(path), "check-config")
    assert result.failed_with(78, "providers.openai_base_url")
    assert "spaced-pw-1f2e" not in result.err


async def test_redis_unreachable_over_a_socket_masks_its_password(cli: Cli, tmp_path: Path) -> None:
    socket_path = tmp_path / "no-redis.sock"
    env = {"REDIS_URL": f"unix://{socket_path}?db=0&password=sock-pw-2b7c"}
    result = await cli("status", env=env)
    assert result.failed_with(69, f"redis unreachable at unix://{socket_path}?db=0&password=***")
    assert "sock-pw-2b7c" not in result.err


# --- status with live processes -------------------------------------------------------


async def test_status_shows_processes_with_heartbeat_age(
    cli: Cli, redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker({"research": QUEUES["research"]}, {"heartbeat_interval": 0.5})
    await wait_started(worker)
    identity = f"{socket.gethostname()}:w1"

    status = (await cli("status", "--json")).json()
    research = next(q for q in status["queues"] if q["queue"] == "research")
    [consumer] = research["consumers"]
    assert consumer["identity"] == identity
    assert consumer["alive"] is True
    assert consumer["heartbeat"]["pid"] == worker.pid
    assert 0 <= consumer["heartbeat_age_s"] < 2.0
    assert next(q for q in status["queues"] if q["queue"] == "broken")["consumers"] == []

    text = (await cli("status")).out
    line = next(line for line in text.splitlines() if line.strip().startswith(identity))
    assert f"pid={worker.pid} alive beat=" in line
    assert "s ago processing=0" in line


async def test_job_lookup_by_id(
    cli: Cli, redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker({"research": QUEUES["research"]})
    await wait_started(worker)
    assert (await cli("enqueue", "research", "{}", "--id", "look-me-up")).status == 0
    identity = f"{socket.gethostname()}:w1"

    async def completed() -> Any:
        result = await cli("job", "research", "look-me-up", "--json")
        return result.status == 0 and result.json()["state"] == "completed" and result.json()

    record = None
    deadline = time.monotonic() + 10
    while not record and time.monotonic() < deadline:
        record = await completed()
        await asyncio.sleep(0.05)
    assert record, "the job never got a completed record"
    assert (record["id"], record["attempt"], record["worker"]) == ("look-me-up", 1, identity)
    assert record["last_error"] is None
    assert record["finished_ms"] >= record["started_ms"] > 0
    text = (await cli("job", "research", "look-me-up")).out
    assert any(line.split() == ["state", "completed"] for line in text.splitlines()), text
    finished = next(line for line in text.splitlines() if line.startswith("finished_ms"))
    assert re.fullmatch(r"finished_ms +\d{13} \(\d{4}-\d\d-\d\dT[\d:.]+\+00:00\)", finished)
    assert (await cli("job", "research", "never-enqueued")).failed_with(
        1, "no record of job 'never-enqueued' in research"
    )


# --- failures: one line, no traceback -------------------------------------------------


async def test_unknown_queue(cli: Cli) -> None:
    for args in (["pause", "nope"], ["enqueue", "nope", "{}"], ["dead", "list", "nope"]):
        assert (await cli(*args)).failed_with(78, "no queue named 'nope'")


async def test_redis_unreachable(cli: Cli) -> None:
    port = free_port()  # nothing listens on it
    env = {"REDIS_URL": f"redis://:{SECRETS['REDIS_PASSWORD']}@127.0.0.1:{port}/0"}
    for args in (
        ["status"],
        ["status", "--json"],
        ["pause", "research"],
        ["dead", "list", "research"],
    ):
        result = await cli(*args, env=env)
        assert result.failed_with(69, f"redis unreachable at redis://:***@127.0.0.1:{port}/0")
        assert SECRETS["REDIS_PASSWORD"] not in result.err


async def test_redis_refusing_a_command(cli: Cli) -> None:
    result = await cli("status", env={"REDIS_URL": "redis://127.0.0.1:6379/999"})
    assert result.failed_with(1, "refused: DB index is out of range")


async def test_database_unreachable_for_migrate(cli: Cli) -> None:
    port = free_port()  # nothing listens on it
    result = await cli("migrate", env={"DATABASE_URL": f"postgresql://u@127.0.0.1:{port}/x"})
    assert result.failed_with(69, "database unreachable")


async def test_bad_input(cli: Cli, tmp_path: Path) -> None:
    assert (await cli("enqueue", "research", "{nope")).failed_with(2, "data is not JSON")
    assert (await cli("enqueue", "research", "[1]")).failed_with(2, "must be a JSON object")
    reserved = await cli("enqueue", "research", '{"id": "x"}')
    assert reserved.failed_with(2, "reserved field(s) in job data: id")
    missing = await cli("--config", str(tmp_path / "missing.toml"), "status")
    assert missing.failed_with(78, "file not found")


async def test_a_closed_pipe_is_not_a_redis_failure(config_path: Path) -> None:
    """``alchemy status | head -1``: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alchemy",
            "--config",
            str(config_path),
            "status",
            cwd=REPO,
            env=clean_env(),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 141
    assert err.decode() == ""
