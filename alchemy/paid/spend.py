"""What was spent, from the ledger (``provider_calls``): calls, tokens, images and cost by
provider and model, for one job, one brand, one day (UTC), or any mix of them. The command
line's ``alchemy spend`` prints it (docs/operations.md)."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from alchemy.providers.prices import PriceTable

SPEND: Final = """
SELECT provider, model, outcome, count(*) AS calls,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(images), 0) AS images,
       coalesce(sum(cost_usd), 0) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unknown_cost_calls
FROM provider_calls
WHERE ($1::text IS NULL OR job_id = $1)
  AND ($2::uuid IS NULL OR brand_id = $2)
  AND ($3::date IS NULL OR (started_at >= ($3::date)::timestamp AT TIME ZONE 'UTC'
                            AND started_at < ($3::date + 1)::timestamp AT TIME ZONE 'UTC'))
GROUP BY provider, model, outcome
ORDER BY provider, model, outcome
"""
COLUMNS: Final = ("calls", "input_tokens", "output_tokens", "images")
HEADER: Final = ("provider", "model", "calls", "input tok", "output tok", "images", "cost USD")


@dataclass
class Line:
    """The calls of one provider and model (or all of them: the total)."""

    provider: str
    model: str
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

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
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

    def describe(self) -> str:
        parts = [
            f"job {self.job_id}" if self.job_id else "",
            f"brand {self.brand_id}" if self.brand_id else "",
            f"{self.day.isoformat()} (UTC)" if self.day else "",
        ]
        return ", ".join(part for part in parts if part) or "all time"

    def to_json(self) -> dict[str, str | None]:
        return {
            "job": self.job_id,
            "brand": str(self.brand_id) if self.brand_id else None,
            "day": self.day.isoformat() if self.day else None,
        }


@dataclass(frozen=True, slots=True)
class Spend:
    filters: Filters
    lines: list[Line]
    total: Line
    unverified_prices: list[str]  # models of these lines whose price is not verified
    price_table_version: int

    def to_json(self) -> dict[str, Any]:
        total = self.total.to_json()
        del total["provider"], total["model"]
        return {
            "filters": self.filters.to_json(),
            "models": [line.to_json() for line in self.lines],
            "total": total,
            "unverified_prices": self.unverified_prices,
            "price_table_version": self.price_table_version,
        }


async def spend(executor: Any, filters: Filters, prices: PriceTable) -> Spend:
    rows = await executor.fetch(SPEND, filters.job_id, filters.brand_id, filters.day)
    by_model: dict[tuple[str, str], Line] = {}
    total = Line("", "total")
    for row in rows:
        key = (row["provider"], row["model"])
        by_model.setdefault(key, Line(*key)).add(row)
        total.add(row)
    lines = list(by_model.values())
    unverified = sorted(
        {
            line.model
            for line in lines
            if (price := prices.price_of(line.model)) is not None and not price.verified
        }
    )
    return Spend(filters, lines, total, unverified, prices.version)


def render(report: Spend) -> str:
    """The report as a table for people."""
    head = f"spend for {report.filters.describe()}"
    if not report.lines:
        return f"{head}: no provider calls"
    out = [head, _row(*HEADER)]
    for line in [*report.lines, report.total]:
        out.append(
            _row(
                line.provider,
                line.model,
                *(str(getattr(line, column)) for column in COLUMNS),
                f"{line.cost_usd:.6f}",
            )
        )
    out.extend(_notes(report))
    return "\n".join(out)


def _row(*cells: str) -> str:
    provider, model, *numbers = cells
    return f"{provider:<10} {model:<22}" + "".join(f"{cell:>12}" for cell in numbers)


def _notes(report: Spend) -> Iterable[str]:
    unknown = report.total.unknown_cost_calls
    if unknown:
        yield f"not in the cost: {unknown} call(s) interrupted, or of a model without a price"
    if report.unverified_prices:
        models = ", ".join(report.unverified_prices)
        yield f"prices not verified yet (table version {report.price_table_version}): {models}"
