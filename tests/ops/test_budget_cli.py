"""``alchemy budget``: docs/operations.md's examples run as written (on a clock pinned to the
example's moment, over the ledger rows of the ``spend`` example), and its refusals."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.ops.test_spend import BRAND, OPERATIONS, config, run_cli, seed_example

__all__ = ["config"]  # the fixture, shared with the spend tests
PINNED = "2026-11-30 21:30:00+00"


@pytest.fixture
async def pinned_clock(db: asyncpg.Pool) -> AsyncIterator[None]:
    await db.execute(
        "CREATE OR REPLACE FUNCTION alchemy_now() RETURNS timestamptz LANGUAGE sql STABLE"
        f" AS $$ SELECT '{PINNED}'::timestamptz $$"
    )
    yield
    await db.execute(
        "CREATE OR REPLACE FUNCTION alchemy_now() RETURNS timestamptz LANGUAGE sql STABLE"
        " AS 'SELECT now()'"
    )


def budget_example() -> str:
    section = OPERATIONS.read_text().split("### `budget`", 1)[1]
    match = re.search(r"^```\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match, "no example block in the budget section"
    return match.group(1)


async def test_the_documented_example_runs_as_shown(
    db: asyncpg.Pool, config: Path, pinned_clock: None
) -> None:
    await db.execute(
        "INSERT INTO brands (id, name, voice, tone, audience) VALUES ($1, 'Northwind Heating',"
        " 'plain', 'warm', 'homeowners')",
        BRAND,
    )
    await seed_example(db)
    commands = re.split(r"^\$ ", budget_example(), flags=re.MULTILINE)[1:]
    assert len(commands) == 2
    for block in commands:
        command, _, expected = block.partition("\n")
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "alchemy"], command
        status, out, err = await run_cli(config, *argv[3:])
        assert (status, err) == (0, ""), (command, err)
        assert out == expected, f"{command}\n--- docs say ---\n{expected}--- it printed ---\n{out}"
    row = await db.fetchrow("SELECT * FROM brand_budgets WHERE brand_id = $1", BRAND)
    assert (row["daily_usd"], row["monthly_usd"]) == (Decimal("0.1"), Decimal(2))
    assert row["updated_by"].startswith("cli:")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["set", str(uuid.uuid4()), "--daily", "5"], "no brand"),
        (["set", str(BRAND), "--daily", "-1"], "0 or more"),
        (["set", str(BRAND), "--daily", "lots"], "not an amount in USD"),
        (["set", str(BRAND)], "--daily and/or --monthly"),
    ],
)
async def test_refusals_say_why_and_exit_1(
    db: asyncpg.Pool, config: Path, args: list[str], words: str
) -> None:
    await db.execute(
        "INSERT INTO brands (id, name, voice, tone, audience) VALUES ($1, 'N', 'v', 't', 'a')",
        BRAND,
    )
    status, out, err = await run_cli(config, "budget", *args)
    assert status == 1, (out, err)
    assert words in err
    assert "Traceback" not in err


async def test_default_puts_the_brand_back_on_the_configured_budget(
    db: asyncpg.Pool, config: Path
) -> None:
    await db.execute(
        "INSERT INTO brands (id, name, voice, tone, audience) VALUES ($1, 'N', 'v', 't', 'a')",
        BRAND,
    )
    status, _, _ = await run_cli(
        config, "budget", "set", str(BRAND), "--daily", "3", "--monthly", "9"
    )
    assert status == 0
    status, out, err = await run_cli(config, "budget", "set", str(BRAND), "--daily", "default")
    assert status == 0, err
    assert "no daily budget" in out  # config.toml has none
    assert "monthly 9.0000" in out  # left as it was


async def test_spend_by_provider_brand_and_day_and_its_filters(
    db: asyncpg.Pool, config: Path
) -> None:
    await seed_example(db)
    status, out, _ = await run_cli(config, "spend", "--by", "provider", "--json")
    assert status == 0
    report = json.loads(out)
    costs = {line["provider"]: line["cost_usd"] for line in report["providers"]}
    assert costs == {"anthropic": 0.047946, "openai": 0.04249}
    assert report["total"]["cost_usd"] == 0.090436
    status, out, _ = await run_cli(config, "spend", "--by", "brand", "--json")
    assert [(b["brand"], b["calls"]) for b in json.loads(out)["brands"]] == [(str(BRAND), 4)]
    status, out, _ = await run_cli(config, "spend", "--by", "day")
    assert out.splitlines()[2].startswith("2026-11-30 ")
    status, out, _ = await run_cli(
        config, "spend", "--provider", "openai", "--model", "gpt-image-1.5", "--json"
    )
    filtered = json.loads(out)
    assert filtered["filters"]["provider"] == "openai"
    assert [m["model"] for m in filtered["models"]] == ["gpt-image-1.5"]
