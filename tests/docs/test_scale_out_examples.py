"""docs/operations.md, "Scale out", must stay true: its configuration examples load, and the
Redis and Sentinel settings it recommends are accepted by the machine's redis-server."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import redis as sync_redis

from alchemy.config import parse_config
from tests.conftest import REPO
from tests.fakes.redis_server import PrivateRedis
from tests.fakes.redis_topologies import REDIS_SERVER, ServerProcess
from tests.ports import free_port_pair

OPERATIONS = REPO / "docs" / "operations.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def example(name: str) -> str:
    marker = f"# scale-out-example: {name}"
    blocks = [
        body
        for _, body in FENCE.findall(OPERATIONS.read_text())
        if body.split("\n", 1)[0] == marker
    ]
    assert len(blocks) == 1, f"expected one block marked {marker!r}, found {len(blocks)}"
    return blocks[0]


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
def test_configuration_examples_load(topology: str) -> None:
    raw = tomllib.loads(example(topology))
    config = parse_config({**raw, "queues": {"q": {"handler": "m:f"}}})
    assert config.redis.topology == topology
    assert config.redis.url.reveal().startswith("redis://:PASSWORD@")


def settings(text: str) -> dict[str, str]:
    """``directive value`` lines (Redis allows comments only on lines of their own)."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, value = line.split(None, 1)
            pairs[name] = value
    return pairs


def test_recommended_redis_settings_are_accepted(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text(example("redis.conf"))
    port = free_port_pair()
    node = ServerProcess(
        tmp_path / "node", port, [str(conf), "--port", str(port), "--bind", "127.0.0.1"]
    )
    node.start()
    try:
        node.wait_answers()
        with node.client(decode_responses=True) as client:
            for name, value in settings(example("redis.conf")).items():
                assert client.config_get(name)[name] == value, name
            # Without a replica such a master refuses writes: why operations.md wants two.
            with pytest.raises(sync_redis.ResponseError, match="NOREPLICAS"):
                client.lpush("alchemy:{q}:wait", "{}")
    finally:
        node.kill()


def test_recommended_sentinel_settings_are_accepted(tmp_path: Path) -> None:
    master = PrivateRedis(tmp_path, persistent=False)
    master.start()
    text = example("sentinel.conf").replace("10.0.0.1 6379", f"127.0.0.1 {master.port}")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(text)
    port = free_port_pair()
    sentinel = ServerProcess(
        tmp_path / "sentinel", port, [str(conf), "--sentinel", "--port", str(port)]
    )
    sentinel.start()
    try:
        sentinel.wait_answers()
        with sentinel.client(decode_responses=True) as client:
            state = client.sentinel_master("mymaster")
        assert (state["port"], state["down-after-milliseconds"], state["quorum"]) == (
            master.port,
            5000,
            2,
        )
    finally:
        sentinel.kill()
        master.stop()
    assert subprocess.run([REDIS_SERVER, "--version"], capture_output=True).returncode == 0
