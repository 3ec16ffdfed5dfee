"""Spend budgets: a paid call starts only if its worst case fits every budget it counts
against, reserved in the same transaction as its ledger row.

    before a call (one transaction, PostgreSQL's clock ``alchemy_now()``)
    ├── the brand's budgets: its row in brand_budgets, else [budgets] daily_usd/monthly_usd
    ├── the provider's daily cap ([budgets] <provider>_daily_usd), over every brand
    ├── none apply                 the ledger row is written (in_flight, reserved_usd kept
    │                              for the record), nothing locked
    └── some apply                 advisory locks (brand, then provider: one order, no
        │                          deadlock), then each window's use is read from the ledger:
        │                          known costs + the reservations of calls still in flight
        │                          and unexpired
        ├── worst case > a whole budget        OverBudgetError (dead-lettered)
        ├── use + worst case > a budget        BudgetExhaustedError: the job is held, back
        │                                      after [budgets] recheck or the window's end
        └── it fits                            the ledger row, in_flight, with reserved_usd
                                               and reserved_until = now + the bound

After the call the ledger's ``finish`` replaces the reservation by the actual cost (an error
answer: 0; a timeout: unknown, counted as nothing, as ``alchemy spend`` does): the row is no
longer in flight, so its reservation no longer counts. A process that dies mid-call leaves
its row in flight: the reservation stops counting at ``reserved_until`` (the bound), or at
once when the piece is taken over (the row becomes ``interrupted``).

Windows: the day and the month in ``[budgets] time_zone``, by ``started_at``.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import structlog

from alchemy.config import BudgetsConfig
from alchemy.errors import BudgetExhaustedError, OverBudgetError
from alchemy.paid.ledger import BEGIN_RESERVED, CallStart, start_args

log = structlog.get_logger("alchemy.paid.budgets")


# $1 brand (NULL: none), $2 default daily, $3 default monthly, $4 time zone
BUDGETS: Final = """
WITH clock AS (SELECT alchemy_now() AS now, $4::text AS tz)
SELECT clock.now,
       date_trunc('day', clock.now AT TIME ZONE tz) AT TIME ZONE tz AS day_start,
       (date_trunc('day', clock.now AT TIME ZONE tz) + interval '1 day') AT TIME ZONE tz
           AS day_end,
       date_trunc('month', clock.now AT TIME ZONE tz) AT TIME ZONE tz AS month_start,
       (date_trunc('month', clock.now AT TIME ZONE tz) + interval '1 month') AT TIME ZONE tz
           AS month_end,
       coalesce(b.daily_usd, $2::numeric) AS daily_usd,
       coalesce(b.monthly_usd, $3::numeric) AS monthly_usd,
       b.brand_id IS NOT NULL AS own
FROM clock LEFT JOIN brand_budgets b ON b.brand_id = $1
"""
# The use of a window from the ledger: $1 brand or NULL, $2 provider or NULL, $3 start,
# $4 end, $5 now. A reservation counts while its call is in flight and unexpired.
USE: Final = """
SELECT coalesce(sum(cost_usd), 0) AS spent,
       coalesce(sum(reserved_usd) FILTER (WHERE outcome = 'in_flight'
                                            AND reserved_until > $5), 0) AS reserved
FROM provider_calls
WHERE ($1::uuid IS NULL OR brand_id = $1) AND ($2::text IS NULL OR provider = $2)
  AND started_at >= $3 AND started_at < $4
"""
LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


@dataclass(frozen=True, slots=True)
class Window:
    """One budget's window and its use."""

    scope: str  # "brand <uuid>" | "provider <name>"
    kind: str  # daily | monthly
    budget: Decimal
    start: datetime.datetime
    end: datetime.datetime
    spent: Decimal
    reserved: Decimal

    @property
    def used(self) -> Decimal:
        return self.spent + self.reserved


@dataclass(frozen=True, slots=True)
class Limits:
    """The budgets that apply to a brand and a provider now, with the clock's windows."""

    now: datetime.datetime
    daily: Decimal
    monthly: Decimal
    provider_daily: Decimal
    own: bool  # the brand has a row of its own in brand_budgets
    days: tuple[datetime.datetime, datetime.datetime]
    months: tuple[datetime.datetime, datetime.datetime]

    @property
    def any(self) -> bool:
        return bool(self.daily or self.monthly or self.provider_daily)


def _money(value: float) -> Decimal:
    return Decimal(str(value))


class Budgets:
    """The budget checks of one process (its config), used by the paid-call path."""

    def __init__(self, config: BudgetsConfig, reservation_seconds: float) -> None:
        self.config = config
        self.reservation_seconds = config.reservation_timeout or reservation_seconds

    async def limits(self, conn: Any, brand_id: uuid.UUID | None, provider: str) -> Limits:
        row = await conn.fetchrow(
            BUDGETS,
            brand_id,
            _money(self.config.daily_usd),
            _money(self.config.monthly_usd),
            self.config.time_zone,
        )
        brand = brand_id is not None
        return Limits(
            now=row["now"],
            daily=row["daily_usd"] if brand else Decimal(0),
            monthly=row["monthly_usd"] if brand else Decimal(0),
            provider_daily=_money(self.config.provider_cap(provider)),
            own=bool(row["own"]),
            days=(row["day_start"], row["day_end"]),
            months=(row["month_start"], row["month_end"]),
        )

    async def windows(
        self, conn: Any, limits: Limits, brand_id: uuid.UUID | None, provider: str
    ) -> list[Window]:
        """Each budget that applies, with its use now (from the ledger)."""
        wanted: list[tuple[str, str, Decimal, tuple[Any, Any], Any, Any]] = []
        if brand_id is not None and limits.daily:
            wanted.append((f"brand {brand_id}", "daily", limits.daily, limits.days, brand_id, None))
        if brand_id is not None and limits.monthly:
            scope = f"brand {brand_id}"
            wanted.append((scope, "monthly", limits.monthly, limits.months, brand_id, None))
        if limits.provider_daily:
            scope = f"provider {provider}"
            wanted.append((scope, "daily", limits.provider_daily, limits.days, None, provider))
        out = []
        for scope, kind, budget, (start, end), brand, only in wanted:
            row = await conn.fetchrow(USE, brand, only, start, end, limits.now)
            out.append(Window(scope, kind, budget, start, end, row["spent"], row["reserved"]))
        return out

    async def begin(self, conn: Any, start: CallStart, worst: Decimal | None) -> None:
        """Write the call's ledger row with its reservation if every budget has room for
        ``worst`` (None: the model has no price, nothing to reserve); otherwise raise
        :class:`BudgetExhaustedError` or :class:`OverBudgetError`."""
        reserve = (BEGIN_RESERVED, *start_args(start), worst, self.reservation_seconds)
        limits = await self.limits(conn, start.brand_id, start.provider)
        if not limits.any or worst is None:  # nothing to check: no lock, no transaction
            await conn.execute(*reserve)
            return
        async with conn.transaction():
            # Read again inside: the windows are those of the transaction's clock.
            limits = await self.limits(conn, start.brand_id, start.provider)
            if start.brand_id is not None and (limits.daily or limits.monthly):
                await conn.execute(LOCK, f"alchemy:budget:brand:{start.brand_id}")
            if limits.provider_daily:
                await conn.execute(LOCK, f"alchemy:budget:provider:{start.provider}")
            windows = await self.windows(conn, limits, start.brand_id, start.provider)
            for window in windows:
                self._check(window, worst, start, limits.now)
            await conn.execute(*reserve)

    def _check(
        self, window: Window, worst: Decimal, start: CallStart, now: datetime.datetime
    ) -> None:
        what = f"{start.provider} {start.model}"
        if worst > window.budget:
            raise OverBudgetError(
                f"over_budget: {window.scope}: this call's worst case ${worst:.4f} ({what})"
                f" is more than the whole {window.kind} budget of ${window.budget:.2f};"
                " raise the budget or lower max_tokens, then retry it from the dead list"
            )
        if window.used + worst <= window.budget:
            return
        until_reset = max(0.0, (window.end - now).total_seconds())
        delay = min(self.config.recheck, until_reset + 0.05)
        log.info(
            "budget_exhausted",
            scope=window.scope,
            window=window.kind,
            budget_usd=str(window.budget),
            spent_usd=str(window.spent),
            reserved_usd=str(window.reserved),
            worst_usd=str(worst),
            retry_in_s=round(delay, 3),
        )
        raise BudgetExhaustedError(
            delay,
            f"budget_exhausted: {window.scope} {window.kind} budget ${window.budget:.2f}"
            f" (spent ${window.spent:.4f}, reserved ${window.reserved:.4f}) has no room for"
            f" this call's worst case ${worst:.4f} ({what}); held until"
            f" {window.end.isoformat()} or a raise",
        )
