"""Brands' budgets on the listener: ``GET /api/budgets``, ``GET`` and ``POST
/api/brands/{brand_id}/budget``, and the budget gauges of ``/metrics`` (refreshed from
PostgreSQL at a scrape, at most once per ``ttl``).

A POST sets the brand's own budgets (JSON ``{"daily_usd": 12.5, "monthly_usd": "default"}``:
a number, 0 for none, ``"default"`` for config.toml's, absent to leave it) and releases the
brand's held jobs at once, as ``alchemy budget set`` does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from alchemy.config import Config
from alchemy.errors import BudgetError
from alchemy.http.deps import DEPS, Access, ApiError, Deps, Routes, json_response
from alchemy.paid.brand_budgets import BudgetReport, parse_amount, report, set_budget
from alchemy.queue.admin import QueueAdmin

BUDGET_ROUTES: Final = Routes()
SCRAPE_TTL: Final = 1.0  # seconds a report read for /metrics is reused


class BudgetBook:
    """What the listener reads and sets of budgets, through the process's asyncpg pool."""

    def __init__(self, config: Config, db: Callable[[], Awaitable[Any]]) -> None:
        self.config = config
        self.db = db
        self._read_at = float("-inf")
        self.last: BudgetReport | None = None

    async def report(
        self, brand_id: uuid.UUID | None = None, *, idle_brands: bool = True
    ) -> BudgetReport:
        return await report(await self.db(), self.config.budgets, brand_id, idle_brands=idle_brands)

    async def for_scrape(self) -> BudgetReport | None:
        """Every brand's report, read at most once per ``SCRAPE_TTL``; the last one (or
        None) when PostgreSQL does not answer."""
        if time.monotonic() - self._read_at >= SCRAPE_TTL:
            self._read_at = time.monotonic()
            try:
                self.last = await self.report(idle_brands=False)
            except Exception:
                self.last = None
        return self.last

    async def set(self, brand_id: uuid.UUID, daily: Any, monthly: Any, by: str) -> None:
        await set_budget(await self.db(), brand_id, daily, monthly, by)
        self._read_at = float("-inf")


def _book(deps: Deps) -> BudgetBook:
    if deps.budgets is None:
        raise ApiError(404, "budgets need PostgreSQL, which this process does not use")
    book: BudgetBook = deps.budgets
    return book


def _brand(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["brand_id"])
    except ValueError:
        raise ApiError(400, "brand_id must be a UUID") from None


def _amount(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(400, f'{key} must be a number, 0 for none, or "default"')
    try:
        return parse_amount(str(value))
    except BudgetError as exc:
        raise ApiError(400, f"{key}: {exc}") from None


@BUDGET_ROUTES.get("/api/budgets", Access.COUNTS)
async def list_budgets(request: web.Request) -> web.Response:
    found = await _book(request.app[DEPS]).report()
    return json_response(found.to_json())


@BUDGET_ROUTES.get("/api/brands/{brand_id}/budget", Access.COUNTS)
async def show_budget(request: web.Request) -> web.Response:
    try:
        found = await _book(request.app[DEPS]).report(_brand(request))
    except BudgetError as exc:
        raise ApiError(404, str(exc)) from None
    return json_response({"time_zone": found.time_zone, **found.brands[0].to_json()})


@BUDGET_ROUTES.post("/api/brands/{brand_id}/budget", Access.CHANGE)
async def set_brand_budget(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    book = _book(deps)
    brand_id = _brand(request)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict) or not {"daily_usd", "monthly_usd"} & set(body):
        raise ApiError(400, "the body must be a JSON object with daily_usd and/or monthly_usd")
    daily, monthly = _amount(body, "daily_usd"), _amount(body, "monthly_usd")
    try:
        await book.set(brand_id, daily, monthly, f"api:{deps.identity}")
    except BudgetError as exc:
        raise ApiError(404, str(exc)) from None
    admin = QueueAdmin(deps.redis, prefix=deps.config.redis.prefix)
    released = await admin.release_budget_holds(sorted(deps.queue_names), f"brand {brand_id}")
    found = await book.report(brand_id)
    shown = {"time_zone": found.time_zone, **found.brands[0].to_json(), "released": released}
    return json_response(shown)
