"""``alchemy budget``: brands' spend budgets (alchemy.paid.brand_budgets), shown and set.

    alchemy budget show [--brand UUID] [--json]
    alchemy budget set BRAND [--daily USD|default] [--monthly USD|default] [--json]

``set`` writes the brand's own row and then releases the brand's jobs held for
``budget_exhausted`` in every configured queue, so a raise takes effect at once (a budget
lowered holds them again at their next look).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from alchemy.config import Config
from alchemy.errors import BudgetError
from alchemy.paid.brand_budgets import BudgetReport, Use, parse_amount, report, set_budget


def add_parser(
    sub: Any, parents: list[argparse.ArgumentParser], uuid_type: Callable[..., Any]
) -> None:
    budget = sub.add_parser(
        "budget", parents=parents, help="brands' spend budgets: show them, set one"
    )
    verbs = budget.add_subparsers(dest="budget_command", required=True)
    show = verbs.add_parser("show", parents=parents, help="budgets, spend and what remains")
    show.add_argument("--brand", type=uuid_type, help="one brand (its UUID)")
    put = verbs.add_parser(
        "set", parents=parents, help="a brand's own budgets; held jobs are released at once"
    )
    put.add_argument("brand", type=uuid_type, help="the brand's UUID")
    put.add_argument("--daily", help="USD per day, 0 for none, or 'default' (config.toml)")
    put.add_argument("--monthly", help="USD per month, 0 for none, or 'default'")


async def budget_action(
    config: Config, args: argparse.Namespace, url: str
) -> tuple[BudgetReport, int | None]:
    """``budget show`` / ``budget set``: the report, and for ``set`` how many held jobs were
    released (None: Redis could not be reached; they run within ``[budgets] recheck``)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        released = None
        if args.budget_command == "set":
            daily, monthly = parse_amount(args.daily), parse_amount(args.monthly)
            if daily is None and monthly is None:
                raise BudgetError("say what to set: --daily and/or --monthly")
            who = f"cli:{getpass.getuser()}@{socket.gethostname()}"
            await set_budget(conn, args.brand, daily, monthly, who)
            try:
                released = await release_held(config, f"brand {args.brand}")
            except Exception as exc:
                print(
                    f"alchemy: budget set; held jobs not released now ({type(exc).__name__}):"
                    f" they run within [budgets] recheck ({config.budgets.recheck:g}s)",
                    file=sys.stderr,
                )
        return await report(conn, config.budgets, args.brand), released
    finally:
        await conn.close()


def print_budget(args: argparse.Namespace, found: BudgetReport, released: int | None) -> None:
    if args.json:
        body = found.to_json()
        if released is not None:
            body["released"] = released
        print(json.dumps(body, indent=2))
        return
    print(render(found))
    if released is not None:
        print(f"held jobs released: {released}")


async def release_held(config: Config, scope: str) -> int:
    """Every configured queue's jobs held for ``scope``'s budget, due now."""
    from alchemy.queue.admin import QueueAdmin
    from alchemy.worker.connections import RedisClients

    async with RedisClients(config.redis) as clients:
        admin = QueueAdmin(clients.shared, prefix=config.redis.prefix)
        return await admin.release_budget_holds([q.name for q in config.queues], scope)


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _window(use: Use) -> str:
    if not use.budget:
        return f"no {use.kind} budget (spent {_usd(use.spent)})"
    return (
        f"{use.kind} {_usd(use.budget)}: spent {_usd(use.spent)}, reserved"
        f" {_usd(use.reserved)}, remaining {_usd(use.remaining)} (until {use.end.isoformat()})"
    )


def render(found: BudgetReport) -> str:
    out = [f"budgets (USD, windows in {found.time_zone})"]
    if not found.brands and not found.providers:
        out.append("  no brand has a budget or spend this month")
    for brand in found.brands:
        source = "its own" if brand.own else "config.toml"
        out.append(f"{brand.brand_id}  {brand.name} ({source})")
        out.append(f"  {_window(brand.daily)}")
        out.append(f"  {_window(brand.monthly)}")
    for cap in found.providers:
        out.append(f"provider {cap.provider}")
        out.append(f"  {_window(cap.daily)}")
    return "\n".join(out)
