"""``alchemy spend``: docs/operations.md's example runs as written against ledger rows made
for it, and the usage errors; and after a real run of the handlers, the worker's /metrics,
the ledger and ``alchemy spend --json`` give the same totals (issue 8, acceptance 7)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.providers.prices import shipped_prices
from tests.conftest import REPO, build_config_dict, to_toml, wait_for, wait_started
from tests.fakes.ai_server import FakeAI
from tests.handlers.support import (
    create_content_request,
    drained,
    push,
    queue_tables,
    worker_sections,
)
from tests.ops.test_cli import clean_env
from tests.ports import free_port

OPERATIONS = REPO / "docs" / "operations.md"
BRAND = uuid.UUID("0b9d5a52-6f1e-4c8e-9a55-3f0c2d7e1a10")
AT = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
# The ledger rows of docs/operations.md's example: job cq-42 (a content piece that needed
# the repair round), its media follow-up, and a research call a kill cut off.
EXAMPLE_CALLS = [
    ("cq-42", "anthropic", "claude-sonnet-5-5", "ok", 812, 1404, 0),
    ("cq-42", "anthropic", "claude-sonnet-5-5", "ok", 1210, 1388, 0),
    ("cq-42:media", "openai", "gpt-image-1.5", "ok", 50, 1056, 1),
    ("r-7", "anthropic", "claude-sonnet-5-5", "interrupted", 0, 0, 0),
]


def spend_example() -> str:
    """The fenced block of the `spend` section of docs/operations.md."""
    section = OPERATIONS.read_text().split("### `spend`", 1)[1]
    match = re.search(r"^```\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match, "no example block in the spend section"
    return match.group(1)


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alchemy",
        "--config",
        str(config),
        *args,
        cwd=REPO,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def config(tmp_path: Path, prefix: str, database_url: str) -> Path:
    path = tmp_path / "config.toml"
    raw = build_config_dict(prefix, {}, database={"url": database_url})
    path.write_text(to_toml(raw))
    return path


async def seed_example(db: asyncpg.Pool) -> None:
    prices = shipped_prices()
    for job_id, provider, model, outcome, tokens_in, tokens_out, images in EXAMPLE_CALLS:
        cost = prices.cost(model, tokens_in, tokens_out, images) if outcome == "ok" else None
        await db.execute(
            "INSERT INTO provider_calls (id, job_id, work_key, queue, brand_id, owner_token,"
            " provider, model, fingerprint, outcome, input_tokens, output_tokens, images,"
            " cost_usd, started_at, finished_at)"
            " VALUES ($1, $2, $3, 'q', $4, 'o', $5, $6, 'f', $7, $8, $9, $10, $11, $12, $12)",
            uuid.uuid4(),
            job_id,
            f"key:{job_id}",
            BRAND,
            provider,
            model,
            outcome,
            tokens_in,
            tokens_out,
            images,
            cost,
            AT,
        )


async def test_the_documented_example_runs_as_shown(db: asyncpg.Pool, config: Path) -> None:
    await seed_example(db)
    example = spend_example()
    commands = re.split(r"^\$ ", example, flags=re.MULTILINE)[1:]
    assert len(commands) >= 2
    for block in commands:
        command, _, expected = block.partition("\n")
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "alchemy"], command
        status, out, err = await run_cli(config, *argv[3:])
        assert (status, err) == (0, ""), (command, err)
        assert out == expected, f"{command}\n--- docs say ---\n{expected}--- it printed ---\n{out}"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--brand", "nope"], "not a UUID: 'nope'"),
        (["--day", "30/11/2026"], "not a date (YYYY-MM-DD)"),
    ],
)
async def test_bad_filters_are_usage_errors(config: Path, args: list[str], words: str) -> None:
    status, _, err = await run_cli(config, "spend", *args)
    assert status == 2
    assert words in err


async def test_without_a_database_spend_exits_69(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "nodb.toml"
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    path.write_text(to_toml(build_config_dict(prefix, {}, database={"url": url})))
    status, _, err = await run_cli(path, "spend")
    assert status == 69
    assert "database unreachable" in err
    assert "Traceback" not in err


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(90)
async def test_metrics_the_ledger_and_spend_agree_after_a_run(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    database_url: str,
    spawn_worker: Any,
    tmp_path: Path,
    config: Path,
) -> None:
    port = free_port()
    kw = worker_sections(fake_ai, database_url, tmp_path / "media")
    worker = spawn_worker(queue_tables(), {"name": "metered"}, http={"port": port}, **kw)
    await wait_started(worker)
    rows = [await create_content_request(db) for _ in range(3)]
    for n, row_id in enumerate(rows):
        await push(
            redis, prefix, "content-generation", f"m-{n}", content_queue_id=str(row_id), media=True
        )
    done = "SELECT count(*) FROM media WHERE status = 'completed'"
    await wait_for(lambda: _count(db, done, 3), within=30)
    await wait_for(lambda: drained(redis, prefix), within=10)

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    ledger = await db.fetchrow(
        "SELECT count(*) AS calls, sum(input_tokens) AS tokens_in,"
        " sum(output_tokens) AS tokens_out, sum(images) AS images, sum(cost_usd) AS cost"
        " FROM provider_calls"
    )
    assert ledger["calls"] == len(fake_ai.calls) == 6
    assert metric(text, "alchemy_provider_calls_total") == ledger["calls"]
    assert metric(text, "alchemy_provider_calls_total", provider="openai", outcome="ok") == 3
    assert metric(text, "alchemy_provider_tokens_total", kind="input") == ledger["tokens_in"]
    assert metric(text, "alchemy_provider_tokens_total", kind="output") == ledger["tokens_out"]
    assert metric(text, "alchemy_images_generated_total") == ledger["images"] == 3
    assert metric(text, "alchemy_provider_cost_usd_total") == pytest.approx(float(ledger["cost"]))
    assert ledger["cost"] > Decimal(0)

    status, out, _ = await run_cli(config, "spend", "--json")
    assert status == 0
    total = json.loads(out)["total"]
    assert (total["calls"], total["input_tokens"], total["output_tokens"], total["images"]) == (
        ledger["calls"],
        ledger["tokens_in"],
        ledger["tokens_out"],
        ledger["images"],
    )
    assert total["cost_usd"] == pytest.approx(float(ledger["cost"]))
    assert total["outcomes"] == {"ok": 6}


async def _count(db: asyncpg.Pool, query: str, expected: int) -> bool:
    return int(await db.fetchval(query)) == expected
