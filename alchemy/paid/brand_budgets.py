"""Brands' budgets as operators see and set them: ``alchemy budget``, the admin API's
``/api/brands/{id}/budget`` and the budget gauges of ``/metrics``.

    report   every brand with a budget or spend this month (or one brand): its budgets
             (its own row in brand_budgets, else [budgets] in config.toml), and per window
             what the ledger says was spent, what calls in flight have reserved, and what
             remains; and each provider's daily cap with its use
    set      a brand's own daily and/or monthly budget (``None``: leave it; ``"default"``:
             back to config.toml; 0: no budget of that kind for the brand)

Raising a budget releases the brand's held jobs at once: that is the caller's step (the
queues are in Redis, :meth:`alchemy.queue.admin.QueueAdmin.release_budget_holds`).
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from alchemy.config import BudgetsConfig
from alchemy.errors import BudgetError

PROVIDERS: Final = ("anthropic", "openai")

# $1 time zone, $2 default daily, $3 default monthly, $4 one brand or NULL (all), $5 also
# the brands that only have the configured default (no spend this month, no row of their own)
REPORT: Final = """
WITH clock AS (SELECT alchemy_now() AS now, $1::text AS tz),
w AS (
    SELECT now,
           date_trunc('day', now AT TIME ZONE tz) AT TIME ZONE tz AS day_start,
           (date_trunc('day', now AT TIME ZONE tz) + interval '1 day') AT TIME ZONE tz
               AS day_end,
           date_trunc('month', now AT TIME ZONE tz) AT TIME ZONE tz AS month_start,
           (date_trunc('month', now AT TIME ZONE tz) + interval '1 month') AT TIME ZONE tz
               AS month_end
    FROM clock
),
calls AS (
    SELECT c.brand_id, c.provider, c.cost_usd, c.started_at >= w.day_start AS today,
           CASE WHEN c.outcome = 'in_flight' AND c.reserved_until > w.now
                THEN c.reserved_usd END AS reserved
    FROM provider_calls c, w
    WHERE c.started_at >= least(w.month_start, w.day_start) AND c.started_at < w.month_end
      AND ($4::uuid IS NULL OR c.brand_id = $4)
),
used AS (
    SELECT brand_id,
           coalesce(sum(cost_usd) FILTER (WHERE today), 0) AS day_spent,
           coalesce(sum(reserved) FILTER (WHERE today), 0) AS day_reserved,
           coalesce(sum(cost_usd), 0) AS month_spent,
           coalesce(sum(reserved), 0) AS month_reserved
    FROM calls WHERE brand_id IS NOT NULL GROUP BY brand_id
)
SELECT b.id AS brand_id, b.name, w.*, bb.brand_id IS NOT NULL AS own,
       coalesce(bb.daily_usd, $2::numeric) AS daily_usd,
       coalesce(bb.monthly_usd, $3::numeric) AS monthly_usd,
       coalesce(u.day_spent, 0) AS day_spent, coalesce(u.day_reserved, 0) AS day_reserved,
       coalesce(u.month_spent, 0) AS month_spent,
       coalesce(u.month_reserved, 0) AS month_reserved
FROM brands b CROSS JOIN w
LEFT JOIN brand_budgets bb ON bb.brand_id = b.id
LEFT JOIN used u ON u.brand_id = b.id
WHERE ($4::uuid IS NULL OR b.id = $4)
  AND ($4::uuid IS NOT NULL OR u.brand_id IS NOT NULL OR bb.brand_id IS NOT NULL
       OR ($5::bool AND ($2::numeric > 0 OR $3::numeric > 0)))
ORDER BY b.name, b.id
"""
# $1 time zone; each provider's spend and reservations today (for its daily cap).
PROVIDER_DAY: Final = """
WITH clock AS (SELECT alchemy_now() AS now, $1::text AS tz),
w AS (
    SELECT now, date_trunc('day', now AT TIME ZONE tz) AT TIME ZONE tz AS day_start,
           (date_trunc('day', now AT TIME ZONE tz) + interval '1 day') AT TIME ZONE tz
               AS day_end
    FROM clock
)
SELECT c.provider, w.day_start, w.day_end, coalesce(sum(c.cost_usd), 0) AS spent,
       coalesce(sum(c.reserved_usd) FILTER (WHERE c.outcome = 'in_flight'
                                              AND c.reserved_until > w.now), 0) AS reserved
FROM w LEFT JOIN provider_calls c
  ON c.started_at >= w.day_start AND c.started_at < w.day_end AND c.provider = ANY($2)
GROUP BY c.provider, w.day_start, w.day_end
"""
SET: Final = """
INSERT INTO brand_budgets AS bb (brand_id, daily_usd, monthly_usd, updated_by)
VALUES ($1, CASE WHEN $2 THEN $3::numeric END, CASE WHEN $4 THEN $5::numeric END, $6)
ON CONFLICT (brand_id) DO UPDATE
SET daily_usd = CASE WHEN $2 THEN $3::numeric ELSE bb.daily_usd END,
    monthly_usd = CASE WHEN $4 THEN $5::numeric ELSE bb.monthly_usd END,
    updated_at = now(), updated_by = $6
"""

Amount = Decimal | Literal["default"] | None


@dataclass(frozen=True, slots=True)
class Use:
    kind: str  # daily | monthly
    budget: Decimal  # 0: none
    spent: Decimal
    reserved: Decimal
    start: datetime.datetime
    end: datetime.datetime

    @property
    def remaining(self) -> Decimal | None:
        return None if not self.budget else self.budget - self.spent - self.reserved

    def to_json(self) -> dict[str, Any]:
        remaining = self.remaining
        return {
            "budget_usd": float(self.budget) if self.budget else None,
            "spent_usd": float(self.spent),
            "reserved_usd": float(self.reserved),
            "remaining_usd": None if remaining is None else float(remaining),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class BrandBudget:
    brand_id: uuid.UUID
    name: str
    own: bool  # a row of its own in brand_budgets (else config.toml's defaults)
    daily: Use
    monthly: Use

    def to_json(self) -> dict[str, Any]:
        return {
            "brand_id": str(self.brand_id),
            "name": self.name,
            "source": "brand" if self.own else "config",
            "daily": self.daily.to_json(),
            "monthly": self.monthly.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ProviderCap:
    provider: str
    daily: Use

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "daily": self.daily.to_json()}


@dataclass(frozen=True, slots=True)
class BudgetReport:
    time_zone: str
    brands: list[BrandBudget]
    providers: list[ProviderCap]

    def to_json(self) -> dict[str, Any]:
        return {
            "time_zone": self.time_zone,
            "brands": [brand.to_json() for brand in self.brands],
            "providers": [cap.to_json() for cap in self.providers],
        }


def _money(value: float) -> Decimal:
    return Decimal(str(value))


async def report(
    executor: Any,
    config: BudgetsConfig,
    brand_id: uuid.UUID | None = None,
    *,
    idle_brands: bool = True,
) -> BudgetReport:
    """Every brand's budgets and use now (or ``brand_id``'s). ``idle_brands=False`` leaves
    out the brands with neither spend this month nor a budget of their own (the metrics:
    one series per brand that matters, not per brand that exists)."""
    rows = await executor.fetch(
        REPORT,
        config.time_zone,
        _money(config.daily_usd),
        _money(config.monthly_usd),
        brand_id,
        idle_brands,
    )
    if brand_id is not None and not rows:
        raise BudgetError(f"no brand {brand_id}")
    brands = [
        BrandBudget(
            row["brand_id"],
            row["name"],
            bool(row["own"]),
            Use(
                "daily",
                row["daily_usd"],
                row["day_spent"],
                row["day_reserved"],
                row["day_start"],
                row["day_end"],
            ),
            Use(
                "monthly",
                row["monthly_usd"],
                row["month_spent"],
                row["month_reserved"],
                row["month_start"],
                row["month_end"],
            ),
        )
        for row in rows
    ]
    capped = [p for p in PROVIDERS if config.provider_cap(p)]
    caps: list[ProviderCap] = []
    if capped and brand_id is None:
        rows = await executor.fetch(PROVIDER_DAY, config.time_zone, capped)
        found = {row["provider"]: row for row in rows}
        window = (rows[0]["day_start"], rows[0]["day_end"])
        for provider in capped:
            row = found.get(provider)
            spent = row["spent"] if row else Decimal(0)
            reserved = row["reserved"] if row else Decimal(0)
            budget = _money(config.provider_cap(provider))
            caps.append(ProviderCap(provider, Use("daily", budget, spent, reserved, *window)))
    return BudgetReport(config.time_zone, brands, caps)


def parse_amount(text: str | None) -> Amount:
    """``--daily 12.50`` / ``"default"`` / absent, as :func:`set_budget` takes it."""
    if text is None:
        return None
    if text == "default":
        return "default"
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise BudgetError(f"not an amount in USD: {text!r} (a number, or 'default')") from None
    if not value.is_finite() or value < 0 or value >= Decimal("1e8"):
        raise BudgetError(f"an amount in USD is 0 or more (and below 1e8), got {text!r}")
    return value.quantize(Decimal("0.00000001"))


async def set_budget(
    executor: Any, brand_id: uuid.UUID, daily: Amount, monthly: Amount, by: str
) -> None:
    """Set a brand's own budgets (see the module docstring)."""
    if not await executor.fetchval("SELECT 1 FROM brands WHERE id = $1", brand_id):
        raise BudgetError(f"no brand {brand_id}")
    await executor.execute(
        SET,
        brand_id,
        daily is not None,
        None if daily in (None, "default") else daily,
        monthly is not None,
        None if monthly in (None, "default") else monthly,
        by,
    )
