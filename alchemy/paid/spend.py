"""What was spent, from the ledger (``provider_calls``): calls, tokens, images and cost by
provider and model (or by brand, by provider, by day), for one job, one brand, one
provider, one model, one day (in ``[budgets] time_zone``, default UTC), or any mix of them.
The command line's ``alchemy spend`` prints it (docs/operations.md)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from alchemy.providers.prices import PriceTable

# $1 job, $2 brand, $3 day, $4 provider, $5 model (each NULL: any), $6 the time zone of days
SPEND: Final = """
SELECT provider, model, outcome, brand_id,
       (started_at AT TIME ZONE $6)::date AS day,
       count(*) AS calls,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(images), 0) AS images,
       coalesce(sum(cost_usd), 0) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unknown_cost_calls
FROM provider_calls
WHERE ($1::text IS NULL OR job_id = $1)
  AND ($2::uuid IS NULL OR brand_id = $2)
  AND ($3::date IS NULL OR (started_at >= ($3::date)::timestamp AT TIME ZONE $6
                            AND started_at < ($3::date + 1)::timestamp AT TIME ZONE $6))
  AND ($4::text IS NULL OR provider = $4)
  AND ($5::text IS NULL OR model = $5)
GROUP BY provider, model, outcome, brand_id, day
ORDER BY provider, model, outcome, brand_id, day
"""
GROUPINGS: Final = ("model", "provider", "brand", "day")
COLUMNS: Final = ("calls", "input_tokens", "output_tokens", "images")
NUMBERS: Final = ("calls", "input tok", "output tok", "images", "cost USD")


@dataclass
class Line:
    """The calls of one provider and model, one provider, one brand or one day (or all of
    them: the total); the fields the grouping does not use are empty."""

    provider: str
    model: str
    brand: str = ""  # a brand's UUID ("none": calls without a brand)
    day: str = ""  # YYYY-MM-DD
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost_usd: Decimal = Decimal(0)
    unknown_cost_calls: int = 0  # interrupted (usage unknown), or a model without a price
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, row: Any) -> None:
        for column in COLUMNS:
            setattr(self, column, getattr(self, column) + int(row[column]))
        self.cost_usd += row["cost_usd"]
        self.unknown_cost_calls += int(row["unknown_cost_calls"])
        self.outcomes[row["outcome"]] = self.outcomes.get(row["outcome"], 0) + int(row["calls"])

    def to_json(self, by: str = "model") -> dict[str, Any]:
        keys: dict[str, Any] = {
            "model": {"provider": self.provider, "model": self.model},
            "provider": {"provider": self.provider},
            "brand": {"brand": self.brand},
            "day": {"day": self.day},
        }[by]
        return {
            **keys,
            **{column: getattr(self, column) for column in COLUMNS},
            "cost_usd": float(self.cost_usd),
            "unknown_cost_calls": self.unknown_cost_calls,
            "outcomes": dict(sorted(self.outcomes.items())),
        }


@dataclass(frozen=True, slots=True)
class Filters:
    job_id: str | None = None
    brand_id: uuid.UUID | None = None
    day: datetime.date | None = None
    provider: str | None = None
    model: str | None = None
    time_zone: str = "UTC"  # of days: [budgets] time_zone
    by: str = "model"  # one of GROUPINGS

    def describe(self) -> str:
        parts = [
            f"job {self.job_id}" if self.job_id else "",
            f"brand {self.brand_id}" if self.brand_id else "",
            f"provider {self.provider}" if self.provider else "",
            f"model {self.model}" if self.model else "",
            f"{self.day.isoformat()} ({self.time_zone})" if self.day else "",
        ]
        return ", ".join(part for part in parts if part) or "all time"

    def to_json(self) -> dict[str, str | None]:
        shown = {
            "job": self.job_id,
            "brand": str(self.brand_id) if self.brand_id else None,
            "day": self.day.isoformat() if self.day else None,
        }
        # Shown when used, so the output of the filters that came first stays the same.
        if self.provider:
            shown["provider"] = self.provider
        if self.model:
            shown["model"] = self.model
        if self.day and self.time_zone != "UTC":
            shown["time_zone"] = self.time_zone
        return shown


@dataclass(frozen=True, slots=True)
class Spend:
    filters: Filters
    lines: list[Line]
    total: Line
    unverified_prices: list[str]  # models of these lines whose price is not verified
    price_table_version: int

    def to_json(self) -> dict[str, Any]:
        by = self.filters.by
        total = self.total.to_json("day")
        del total["day"]
        return {
            "filters": self.filters.to_json(),
            LIST_NAMES[by]: [line.to_json(by) for line in self.lines],
            "total": total,
            "unverified_prices": self.unverified_prices,
            "price_table_version": self.price_table_version,
        }


LIST_NAMES: Final = {"model": "models", "provider": "providers", "brand": "brands", "day": "days"}


def _line_of(row: Any, by: str) -> Line:
    if by == "model":
        return Line(row["provider"], row["model"])
    if by == "provider":
        return Line(row["provider"], "")
    if by == "brand":
        return Line("", "", brand=str(row["brand_id"]) if row["brand_id"] else "none")
    return Line("", "", day=row["day"].isoformat())


async def spend(executor: Any, filters: Filters, prices: PriceTable) -> Spend:
    rows = await executor.fetch(
        SPEND,
        filters.job_id,
        filters.brand_id,
        filters.day,
        filters.provider,
        filters.model,
        filters.time_zone,
    )
    grouped: dict[tuple[str, ...], Line] = {}
    total = Line("", "total")
    models: set[str] = set()
    for row in rows:
        line = _line_of(row, filters.by)
        key = (line.provider, line.model, line.brand, line.day)
        grouped.setdefault(key, line).add(row)
        total.add(row)
        models.add(row["model"])
    lines = sorted(grouped.values(), key=lambda x: (x.provider, x.model, x.brand, x.day))
    unverified = sorted(
        {
            model
            for model in models
            if (price := prices.price_of(model)) is not None and not price.verified
        }
    )
    return Spend(filters, lines, total, unverified, prices.version)


def render(report: Spend) -> str:
    """The report as a table for people."""
    head = f"spend for {report.filters.describe()}"
    if not report.lines:
        return f"{head}: no provider calls"
    by = report.filters.by
    first = {"model": ("provider", "model"), "provider": ("provider", ""), "brand": ("brand",)}
    out = [head, _row(by, *first.get(by, ("day",)), *NUMBERS)]
    for line in [*report.lines, report.total]:
        keys = {
            "model": (line.provider, line.model),
            "provider": (line.provider or line.model, ""),
            "brand": (line.brand or line.model,),
            "day": (line.day or line.model,),
        }[by]
        numbers = (str(getattr(line, column)) for column in COLUMNS)
        out.append(_row(by, *keys, *numbers, f"{line.cost_usd:.6f}"))
    out.extend(_notes(report))
    return "\n".join(out)


def _row(by: str, *cells: str) -> str:
    if by == "brand":
        brand, *numbers = cells
        return f"{brand:<37}" + "".join(f"{cell:>12}" for cell in numbers)
    if by == "day":
        day, *numbers = cells
        return f"{day:<11}" + "".join(f"{cell:>12}" for cell in numbers)
    provider, model, *numbers = cells
    return f"{provider:<10} {model:<22}" + "".join(f"{cell:>12}" for cell in numbers)


def _notes(report: Spend) -> Iterable[str]:
    unknown = report.total.unknown_cost_calls
    if unknown:
        yield f"not in the cost: {unknown} call(s) interrupted, or of a model without a price"
    if report.unverified_prices:
        models = ", ".join(report.unverified_prices)
        yield f"prices not verified yet (table version {report.price_table_version}): {models}"
