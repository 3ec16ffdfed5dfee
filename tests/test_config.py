"""Configuration: defaults, the shipped config.toml, validation errors naming the key,
environment overrides, and secrets that never print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alchemy.config import ENV_OVERRIDES, Secret, load_config, mask_url, parse_config, url_secrets
from alchemy.errors import ConfigError
from tests.conftest import REPO

EX_CONFIG = 78


def test_shipped_config_declares_the_original_queues() -> None:
    config = load_config(REPO / "config.toml", {})
    queues = {q.name: q for q in config.queues}
    assert set(queues) == {"content-generation", "research", "media-generation"}
    expected = {"content-generation": (3, 10), "research": (2, 5), "media-generation": (2, 10)}
    for name, (concurrency, per_minute) in expected.items():
        queue = queues[name]
        assert (queue.concurrency, queue.rate_limit, queue.rate_period) == (
            concurrency,
            per_minute,
            60.0,
        )
        assert queue.max_attempts == 3
    assert config.redis.prefix == "alchemy"


def test_the_header_of_config_toml_names_every_environment_override() -> None:
    header = (REPO / "config.toml").read_text().split("\n[", 1)[0]
    missing = [name for name in ENV_OVERRIDES if name not in header]
    assert not missing, f"config.toml's header does not name {missing}"


def test_every_default_is_written_in_config_toml() -> None:
    text = (REPO / "config.toml").read_text()
    defaults = parse_config({"queues": {"q": {"handler": "m:f"}}})
    for section in ("redis", "database", "worker", "log", "providers"):
        for field in getattr(defaults, section).__dataclass_fields__:
            assert f"{field} = " in text, f"{section}.{field} is not documented in config.toml"
    for field in defaults.queues[0].__dataclass_fields__:
        if field != "name":
            assert field in text, f"queue key {field} is not documented in config.toml"


def q(**settings: Any) -> dict[str, Any]:
    return {"queues": {"q": {"handler": "m:f", **settings}}}


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        (q(concurency=2), "queues.q.concurency", "unknown"),
        ({"redis": {"prefx": "x"}}, "redis.prefx", "unknown"),
        ({"colour": {}}, "colour", "unknown"),
        (
            q(concurrency="3"),
            "queues.q.concurrency",
            "integer",
        ),
        (q(concurrency=0), "queues.q.concurrency", ">= 1"),
        (
            q(enabled="yes"),
            "queues.q.enabled",
            "true or false",
        ),
        ({"queues": {"q": {"handler": "no-colon"}}}, "queues.q.handler", "match"),
        ({"queues": {"q": {}}}, "queues.q.handler", "missing"),
        ({"queues": {"Bad:Name": {"handler": "m:f"}}}, "queues.Bad:Name", "queue names"),
        ({"redis": {"url": "http://x"}}, "redis.url", "redis://"),
        ({"log": {"level": "loud"}}, "log.level", "one of"),
        (
            {"worker": {"heartbeat_ttl": 1.0, "heartbeat_interval": 1.0}},
            "worker.heartbeat_ttl",
            "three times",
        ),
        (
            {"worker": {"reconcile_interval": 6.0}},  # = block_timeout 1 + socket_timeout 5
            "worker.reconcile_interval",
            "run twice",
        ),
        (
            {"redis": {"socket_timeout": 9.5}},  # 1 + 9.5 >= the default 10 s
            "worker.reconcile_interval",
            "redis.block_timeout + redis.socket_timeout",
        ),
        (
            {"worker": {"recovery_interval": 9.0}},
            "worker.recovery_interval",
            "heartbeat_ttl",
        ),
        (
            q(backoff_initial=10.0, backoff_max=1.0),
            "queues.q.backoff_max",
            ">= backoff_initial",
        ),
        (
            q(rate_burst=5),
            "queues.q.rate_burst",
            "rate_limit",
        ),
        ({"queues": "nope"}, "queues", "table"),
        ({"redis": {"topology": "ring"}}, "redis.topology", "one of single, cluster, sentinel"),
        ({"redis": {"topology": "cluster"}}, "redis.cluster_nodes", "at least one"),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": ["10.0.0.1"]}},
            "redis.cluster_nodes",
            "does not match",
        ),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": ["h:70000"]}},
            "redis.cluster_nodes",
            "1-65535",
        ),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": "h:7001"}},
            "redis.cluster_nodes",
            "list of strings",
        ),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": ["h:7001"], "url": "redis://h/2"}},
            "redis.url",
            "only database 0",
        ),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": ["h:1"], "url": "unix:///r.sock"}},
            "redis.url",
            "redis:// or rediss://",
        ),
        ({"redis": {"cluster_nodes": ["h:7001"]}}, "redis.cluster_nodes", '"cluster"'),
        ({"redis": {"topology": "sentinel"}}, "redis.sentinels", "at least one"),
        (
            {"redis": {"topology": "sentinel", "sentinels": ["h:26379"]}},
            "redis.sentinel_master",
            "must name",
        ),
        (
            {"redis": {"topology": "cluster", "cluster_nodes": ["h:1"], "sentinels": ["h:2"]}},
            "redis.sentinels",
            '"sentinel"',
        ),
        ({"redis": {"sentinel_password": "pw"}}, "redis.sentinel_password", '"sentinel"'),
        ({"budgets": {"time_zone": "Mars/Olympus"}}, "budgets.time_zone", "not a time zone"),
        ({"budgets": {"daily_usd": -1}}, "budgets.daily_usd", ">= 0"),
        (
            {"budgets": {"reservation_timeout": 10}},
            "budgets.reservation_timeout",
            "longest a provider call can take (120s",
        ),
        ({"media": {"store": "s3"}}, "media.s3_bucket", 'because media.store = "s3"'),
        (
            {"media": {"store": "s3", "s3_bucket": "media"}},
            "media.s3_access_key_id",
            "env AWS_ACCESS_KEY_ID",
        ),
        (
            {"media": {"store": "s3", "s3_bucket": "media", "s3_access_key_id": "AK"}},
            "media.s3_secret_access_key",
            "env AWS_SECRET_ACCESS_KEY",
        ),
        ({"media": {"store": "gcs"}}, "media.store", "one of local, s3"),
        ({"media": {"url_secret": "short"}}, "media.url_secret", "at least 16"),
        ({"media": {"s3_prefix": "no-slash"}}, "media.s3_prefix", "does not match"),
        ({"media": {"url_lifetime": 8 * 86400}}, "media.url_lifetime", "<= 604800"),
        ({"media": {"public_url": "media.example"}}, "media.public_url", "does not match"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_each_topology_parses_with_what_it_needs() -> None:
    cluster = parse_config(
        {"redis": {"topology": "cluster", "cluster_nodes": ["10.0.0.1:7001", "[::1]:7002"]}}
    ).redis
    assert cluster.cluster_nodes == ("10.0.0.1:7001", "[::1]:7002")
    sentinel = parse_config(
        {
            "redis": {
                "topology": "sentinel",
                "sentinels": ["s1:26379", "s2:26379"],
                "sentinel_master": "mymaster",
                "sentinel_password": "sentinel-secret",
                "url": "rediss://:data-secret@ignored:1/3",
            }
        }
    ).redis
    assert (sentinel.sentinel_master, sentinel.sentinel_password) == (
        "mymaster",
        Secret("sentinel-secret"),
    )
    assert "sentinel-secret" not in repr(sentinel)
    assert parse_config({}).redis.topology == "single"


def test_environment_overrides_the_deployment_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n[queues.q]\nhandler = "m:f"\n')
    env = {
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "DATABASE_URL": "postgresql://u:pw@127.0.0.1/db",
        "ANTHROPIC_API_KEY": "sk-ant-secret-value",
        "OPENAI_API_KEY": "sk-openai-secret-value",
        "ALCHEMY_WORKER_NAME": "w7",
        "ALCHEMY_LOG_LEVEL": "debug",
    }
    config = load_config(path, env)
    assert config.redis.url.reveal() == "redis://127.0.0.1:6379/3"
    assert config.database.url.reveal() == "postgresql://u:pw@127.0.0.1/db"
    assert config.providers.anthropic_api_key.reveal() == "sk-ant-secret-value"
    assert config.worker.name == "w7"
    assert config.log.level == "debug"
    assert "sk-ant-secret-value" not in repr(config)
    assert "pw@" not in repr(config)


def test_secrets_and_url_passwords_are_masked() -> None:
    assert repr(Secret("hunter2")) == "Secret('***')"
    assert str(Secret("hunter2")) == "Secret('***')"
    assert mask_url("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("postgresql://bob:pw@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("rediss://acl:pw%40x@r.example:6380/1", "rediss://acl:***@r.example:6380/1", ["pw@x"]),
        ("redis://user-only@host:6379/0", "redis://user-only@host:6379/0", []),
        ("redis://:pw@[::1]:6379", "redis://:***@[::1]:6379", ["pw"]),
        ("unix:///run/r.sock?db=0&password=pw", "unix:///run/r.sock?db=0&password=***", ["pw"]),
        ("unix://:pw@/run/r.sock?db=2", "unix://:***@/run/r.sock?db=2", ["pw"]),
        ("postgresql://u@h/d?sslpassword=pw", "postgresql://u@h/d?sslpassword=***", ["pw"]),
        ("https://user:pw@proxy.example/v1", "https://***@proxy.example/v1", ["user:pw", "pw"]),
        ("https://tok@proxy.example", "https://***@proxy.example", ["tok"]),
        (
            "https://p.example/v1?x=1&api_key=k3y-v;token=t0k-v",
            "https://p.example/v1?x=1&api_key=***;token=***",
            ["k3y-v", "t0k-v"],
        ),
        ("https://p.example/#access_token=t0k", "https://p.example/#access_token=***", ["t0k"]),
        # A password with an unescaped / or ?: the last @ ends the userinfo, never less.
        ("redis://:pa/ss@host:6379/0", "redis://:***@host:6379/0", ["pa/ss"]),
        ("redis://:pa?ss@host/0", "redis://:***@host/0", ["pa?ss"]),
        ("https://p.example/v1?mail=a@b", "https://p.example/v1?mail=a@b", []),
    ],
)
def test_mask_url_hides_every_secret_shape(url: str, shown: str, secrets: list[str]) -> None:
    assert mask_url(url) == shown
    found = url_secrets(url)
    for secret in secrets:
        assert secret in found
        assert secret not in shown.replace("***", "")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "ALCHEMY_CONFIG"}}
    return subprocess.run(
        [sys.executable, "-m", "alchemy", *args],
        cwd=REPO,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_config_stops_startup_with_one_line_and_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[queues.research]\nhandler = "m:f"\nconcurrency = -2\n')
    result = run_cli("--config", str(path), "run")
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == ["alchemy: config error: queues.research.concurrency: must be >= 1, got -2"]


def test_missing_config_file_and_broken_toml_exit_78(tmp_path: Path) -> None:
    missing = run_cli("--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == EX_CONFIG
    assert "file not found" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[redis\n")
    result = run_cli("--config", str(broken), "check-config")
    assert result.returncode == EX_CONFIG
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_config_never_prints_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[queues.q]\nhandler = "alchemy.handlers.noop:handle"\n')
    result = run_cli(
        "--config",
        str(path),
        "check-config",
        env={
            "ANTHROPIC_API_KEY": "sk-ant-very-secret",
            "DATABASE_URL": "postgresql://postgres:db-password-123@127.0.0.1:5432/postgres",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
        },
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "sk-ant-very-secret" not in out
    assert "db-password-123" not in out
    assert "providers.anthropic_api_key = ***" in out


def test_check_config_masks_the_sentinel_password_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[redis]\ntopology = "sentinel"\nsentinels = ["127.0.0.1:26379"]\n'
        'sentinel_master = "mymaster"\nurl = "redis://:data-pw-456@ignored:6379/2"\n'
        '[queues.q]\nhandler = "alchemy.handlers.noop:handle"\n'
    )
    result = run_cli(
        "--config",
        str(path),
        "check-config",
        env={"ALCHEMY_REDIS_SENTINEL_PASSWORD": "sentinel-pw-123"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "sentinel-pw-123" not in out
    assert "data-pw-456" not in out
    assert "redis.sentinel_password = ***" in out
    assert "redis.topology = sentinel" in out
    assert 'redis.sentinels = ["127.0.0.1:26379"]' in out


def test_check_config_masks_the_media_secrets_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[media]\nstore = "s3"\ns3_bucket = "media"\n'
        '[queues.q]\nhandler = "alchemy.handlers.noop:handle"\n'
    )
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDSHOWN",
        "AWS_SECRET_ACCESS_KEY": "s3-secret-key-789",
        "ALCHEMY_MEDIA_URL_SECRET": "media-url-secret-0123456789",
    }
    result = run_cli("--config", str(path), "check-config", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "s3-secret-key-789" not in out
    assert "media-url-secret-0123456789" not in out
    assert "media.s3_secret_access_key = ***" in out
    assert "media.url_secret = ***" in out
    assert "media.s3_access_key_id = AKIDSHOWN" in out  # in every presigned URL: not secret
