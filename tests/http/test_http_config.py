"""The [http], [events] and [records] sections: documented, overridable, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from alchemy.config import is_loopback_host, load_config, parse_config
from alchemy.errors import ConfigError
from tests.conftest import REPO


def test_every_default_is_written_in_config_toml() -> None:
    text = (REPO / "config.toml").read_text()
    defaults = parse_config({"queues": {"q": {"handler": "m:f"}}})
    for section in ("http", "events", "records"):
        assert f"[{section}]" in text
        for name in getattr(defaults, section).__dataclass_fields__:
            assert f"{name} = " in text, f"{section}.{name} is not documented in config.toml"
    shipped = load_config(REPO / "config.toml", {})
    assert (shipped.http.host, shipped.http.port) == ("127.0.0.1", 0)
    assert shipped.http.allowed_hosts == defaults.http.allowed_hosts == ()
    assert (shipped.events.max_length, shipped.records.max_per_queue) == (10_000, 10_000)


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[queues.q]\nhandler = "m:f"\n')
    env = {
        "ALCHEMY_HTTP_PORT": "9464",
        "ALCHEMY_HTTP_HOST": "0.0.0.0",
        "ALCHEMY_ADMIN_TOKEN": "a-long-enough-secret-token",
    }
    config = load_config(path, env)
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9464)
    assert config.http.admin_token.reveal() == "a-long-enough-secret-token"
    assert "a-long-enough" not in repr(config)
    with pytest.raises(ConfigError, match=r"http\.port: must be an integer \(env ALCHEMY_HTTP"):
        load_config(path, {"ALCHEMY_HTTP_PORT": "http"})
    with pytest.raises(ConfigError, match=r"http\.port: must be <= 65535"):
        load_config(path, {"ALCHEMY_HTTP_PORT": "70000"})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("events", "max_length", 10),
        ("records", "max_per_queue", 0),
        ("records", "ttl", 0.0),
        ("http", "check_database", "yes"),
        ("http", "allowed_hosts", "proxy.example"),
        ("http", "allowed_hosts", ["proxy.example:8080"]),
        ("http", "allowed_hosts", ["*.example.com"]),
        ("http", "allowed_hosts", ["https://proxy.example"]),
        ("http", "allowed_hosts", ["cafe:8080"]),
        ("http", "allowed_hosts", ["[::1"]),
        ("http", "allowed_hosts", ["[10.0.0.1]"]),
        ("http", "path_prefix", "/"),
        ("http", "path_prefix", "alchemy"),
        ("http", "path_prefix", "/alchemy/"),
        ("http", "path_prefix", "/../etc"),
        ("http", "path_prefix", "/a b"),
        ("http", "path_prefix", "/<script>"),
    ],
)
def test_bad_values_name_their_key(section: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: "):
        parse_config({section: {key: value}, "queues": {"q": {"handler": "m:f"}}})


def test_allowed_hosts_take_names_and_addresses() -> None:
    names = ["alchemy.internal", "WEB-1", "10.0.0.5", "fd00::1", "[fd00::2]"]
    config = parse_config({"http": {"allowed_hosts": names}, "queues": {"q": {"handler": "m:f"}}})
    assert config.http.allowed_hosts == tuple(names)


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", "web-1"):
        assert not is_loopback_host(host), host


def test_path_prefix_takes_path_segments() -> None:
    for prefix in ("", "/alchemy", "/ops/alchemy-1", "/a.b/c_d~e"):
        config = parse_config(
            {"http": {"path_prefix": prefix}, "queues": {"q": {"handler": "m:f"}}}
        )
        assert config.http.path_prefix == prefix
