"""The price table (``prices.toml`` beside this module): what a provider call costs.

Data in the repository, read once per process, never fetched at run time. Each price
carries the date it was written (``as_of``), the page it must match (``source``) and
whether it was compared with that page (``verified``). A model missing from the table has
no cost (None, NULL in the ledger) and is warned about once per process.
"""

from __future__ import annotations

import datetime
import functools
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, Final

import structlog

log = structlog.get_logger("alchemy.prices")

MILLION: Final = Decimal(1_000_000)
_DATED: Final = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")
_FIGURES: Final = ("input_per_mtok", "output_per_mtok", "per_image")


class PriceTableError(ValueError):
    """The price table is malformed (a bug in the repository, found by the tests)."""


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    provider: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    per_image: Decimal
    as_of: datetime.date
    source: str
    verified: bool

    def cost(self, input_tokens: int, output_tokens: int, images: int) -> Decimal:
        return (
            Decimal(input_tokens) * self.input_per_mtok / MILLION
            + Decimal(output_tokens) * self.output_per_mtok / MILLION
            + Decimal(images) * self.per_image
        )


class PriceTable:
    def __init__(self, version: int, prices: dict[str, Price]) -> None:
        self.version = version
        self.prices = prices
        self._warned: set[str] = set()

    @classmethod
    def shipped(cls) -> PriceTable:
        text = resources.files("alchemy.providers").joinpath("prices.toml").read_text("utf-8")
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> PriceTable:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceTableError(f"prices.toml is not valid TOML: {exc}") from None
        version = raw.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise PriceTableError("prices.toml: 'version' must be a positive integer")
        models = raw.get("models")
        if not isinstance(models, dict) or not models:
            raise PriceTableError("prices.toml: no [models.NAME] tables")
        return cls(version, {name: _price(name, entry) for name, entry in models.items()})

    def price_of(self, model: str) -> Price | None:
        return self.prices.get(model) or self.prices.get(_DATED.sub("", model))

    def cost(
        self, model: str, input_tokens: int, output_tokens: int, images: int
    ) -> Decimal | None:
        """What one call cost, or None (warned once per model) when ``model`` has no price."""
        price = self.price_of(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "provider_price_missing",
                    model=model,
                    price_table_version=self.version,
                    consequence="calls of this model are kept in the ledger with no cost",
                )
            return None
        return price.cost(input_tokens, output_tokens, images)


@functools.cache
def shipped_prices() -> PriceTable:
    """The table shipped with the code, read once per process."""
    return PriceTable.shipped()


def _price(name: str, entry: Any) -> Price:
    where = f"prices.toml [models.{name!r}]"
    if not isinstance(entry, dict):
        raise PriceTableError(f"{where} must be a table")
    figures: dict[str, Decimal] = {}
    for key in _FIGURES:
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise PriceTableError(f"{where}: {key} must be a number >= 0")
        figures[key] = Decimal(str(value))
    as_of = entry.get("as_of")
    if isinstance(as_of, str):
        try:
            as_of = datetime.date.fromisoformat(as_of)
        except ValueError:
            as_of = None
    if not isinstance(as_of, datetime.date):
        raise PriceTableError(f"{where}: as_of must be a date (YYYY-MM-DD)")
    source, provider, verified = entry.get("source"), entry.get("provider"), entry.get("verified")
    if not isinstance(source, str) or not source:
        raise PriceTableError(f"{where}: source must name the page the price comes from")
    if not isinstance(provider, str) or not provider:
        raise PriceTableError(f"{where}: provider must be set")
    if not isinstance(verified, bool):
        raise PriceTableError(f"{where}: verified must be true or false")
    return Price(name, provider, as_of=as_of, source=source, verified=verified, **figures)
