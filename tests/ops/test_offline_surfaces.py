"""Which provider serves is never a secret: with the shipped config.toml and no API key the
offline provider does, and ``status``, ``check-config``, ``/readyz`` and ``/metrics`` each
say so; with both keys in the environment each names the real providers. The production
guard (``ALCHEMY_FORBID_OFFLINE``) refuses to start on the offline provider: exit 78, one
line naming the key. (The startup warning and the rows' flags: tests/handlers/
test_shipped_config.py.)"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.config import Config, load_config
from alchemy.http.app import create_app
from alchemy.http.deps import Deps
from alchemy.http.overview import OverviewCache
from alchemy.ops.wiring import operations
from tests.conftest import REPO
from tests.ops.test_cli import Result, clean_env

SHIPPED = REPO / "config.toml"
KEYS = {"ANTHROPIC_API_KEY": "sk-ant-surface-5d1c", "OPENAI_API_KEY": "sk-openai-surface-77e2"}
# (environment, text provider, image provider, what the offline provider serves)
SCENARIOS = {
    "no keys": ({}, "offline", "offline", ["text", "image"]),
    "both keys": (KEYS, "anthropic", "openai", []),
}


def scenario_env(name: str, prefix: str) -> dict[str, str]:
    return {**SCENARIOS[name][0], "ALCHEMY_REDIS_PREFIX": prefix}


async def alchemy(*args: str, env: dict[str, str]) -> Result:
    """``python -m alchemy --config config.toml ARGS`` as shipped, in a user's environment."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alchemy",
        "--config",
        str(SHIPPED),
        *args,
        cwd=REPO,
        env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    result = Result(proc.returncode, out.decode(), err.decode())
    for key in KEYS.values():
        assert key not in result.out + result.err
    return result


def expected(name: str) -> dict[str, Any]:
    _, text, image, offline = SCENARIOS[name]
    return {"text": text, "image": image, "offline": offline}


@pytest.mark.parametrize("name", SCENARIOS)
async def test_status_names_the_providers(name: str, prefix: str, redis: Redis) -> None:
    shown = await alchemy("status", env=scenario_env(name, prefix))
    assert shown.status == 0, shown
    line = shown.out.splitlines()[-1]
    want = expected(name)
    assert line.startswith(f"providers (this config): text={want['text']} image={want['image']}")
    assert ("OFFLINE (text, image): no model is called" in line) is bool(want["offline"])
    as_json = await alchemy("status", "--json", env=scenario_env(name, prefix))
    assert as_json.json()["providers"] == want


@pytest.mark.parametrize("name", SCENARIOS)
async def test_check_config_names_the_providers(name: str, prefix: str) -> None:
    shown = await alchemy("check-config", env=scenario_env(name, prefix))
    assert shown.status == 0, shown
    want = expected(name)
    head = shown.out.splitlines()[1]
    assert head.startswith(f"# providers in use: text={want['text']} image={want['image']}")
    assert ("OFFLINE" in head) is bool(want["offline"])
    report = (await alchemy("check-config", "--json", env=scenario_env(name, prefix))).json()
    assert report["providers"] == want
    assert report["refused"] is None


def shipped_config(name: str) -> Config:
    return load_config(SHIPPED, SCENARIOS[name][0])


@pytest.fixture
async def listener(redis: Redis, prefix: str) -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def start(config: Config) -> TestClient[Any, Any]:
        names = [q.name for q in config.queues]
        overview = OverviewCache(redis, prefix, names, ttl=0.0)
        metrics = operations(config).metrics
        app = create_app(Deps(config, redis, "test:w", overview, metrics=metrics))
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.mark.parametrize("name", SCENARIOS)
async def test_readyz_names_the_providers(name: str, listener: Any) -> None:
    client = await listener(shipped_config(name))
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 200  # placeholders are not a reason to take no traffic
    assert body["providers"] == expected(name)


@pytest.mark.parametrize("name", SCENARIOS)
async def test_metrics_name_the_providers(name: str, listener: Any) -> None:
    client = await listener(shipped_config(name))
    text = await (await client.get("/metrics")).text()
    series = sorted(line for line in text.splitlines() if line.startswith("alchemy_provider_in"))
    want = expected(name)
    assert series == [
        f'alchemy_provider_in_use{{kind="image",provider="{want["image"]}"}} 1.0',
        f'alchemy_provider_in_use{{kind="text",provider="{want["text"]}"}} 1.0',
    ]


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({}, "providers.text_provider", "set ANTHROPIC_API_KEY or OPENAI_API_KEY"),
        (
            {"ANTHROPIC_API_KEY": KEYS["ANTHROPIC_API_KEY"]},
            "providers.image_provider",
            "set OPENAI_API_KEY",
        ),
        ({**KEYS, "ALCHEMY_TEXT_PROVIDER": "offline"}, "providers.text_provider", '"offline"'),
    ],
)
async def test_the_production_guard_refuses_to_start_offline(
    env: dict[str, str], key: str, words: str, prefix: str
) -> None:
    guarded = {**env, "ALCHEMY_FORBID_OFFLINE": "1", "ALCHEMY_REDIS_PREFIX": prefix}
    started = await alchemy("run", env=guarded)
    assert started.failed_with(78, f"alchemy: config error: {key}: ")
    assert words in started.err
    assert "providers.forbid_offline" in started.err
    assert started.out == ""
    checked = await alchemy("check-config", "--json", env=guarded)
    assert checked.status == 78
    assert key in json.loads(checked.out)["refused"]


async def test_the_production_guard_lets_real_providers_start(prefix: str) -> None:
    guarded = {**KEYS, "ALCHEMY_FORBID_OFFLINE": "1", "ALCHEMY_REDIS_PREFIX": prefix}
    checked = await alchemy("check-config", env=guarded)
    assert checked.status == 0, checked
    assert "refused" not in checked.out
