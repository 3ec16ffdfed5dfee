"""The price table shipped in the package: every figure dated and sourced, costs computed
from usage, a model without a price costs None (warned once)."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from alchemy.config import ProvidersConfig
from alchemy.providers.prices import PriceTable, PriceTableError, shipped_prices


def test_the_shipped_table_prices_the_default_models_with_date_and_source() -> None:
    table = shipped_prices()
    assert table.version >= 1
    defaults = ProvidersConfig()
    for model in ("offline-1", defaults.anthropic_model, defaults.openai_model):
        assert table.price_of(model) is not None, model
    assert table.price_of(defaults.image_model) is not None
    for price in table.prices.values():
        assert isinstance(price.as_of, datetime.date)
        assert price.source
        if price.provider != "offline":
            assert price.source.startswith("https://"), price.model
    assert table.cost("offline-1", 10_000, 10_000, 3) == 0


def test_cost_from_usage() -> None:
    table = PriceTable.parse(
        """
version = 3
[models."m-1"]
provider = "p"
input_per_mtok = 3.0
output_per_mtok = 15
per_image = 0.04
as_of = 2026-11-30
source = "https://example.invalid/pricing"
verified = true
"""
    )
    assert table.version == 3
    assert table.cost("m-1", 1_000_000, 0, 0) == Decimal("3.0")
    assert table.cost("m-1", 812, 1404, 1) == Decimal("0.002436") + Decimal("0.02106") + Decimal(
        "0.04"
    )
    assert table.cost("m-1-20260101", 1_000_000, 0, 0) == Decimal("3.0")  # a dated id


def test_a_model_without_a_price_costs_none_and_is_warned_once() -> None:
    table = PriceTable.parse(_table_text())
    with capture_logs() as logs:
        assert table.cost("unknown-9", 1, 1, 0) is None
        assert table.cost("unknown-9", 1, 1, 0) is None
    assert [entry["event"] for entry in logs] == ["provider_price_missing"]
    assert logs[0]["model"] == "unknown-9"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ('as_of = "soon"', "as_of"),
        ('source = ""', "source"),
        ("input_per_mtok = -1", "input_per_mtok"),
        ('verified = "yes"', "verified"),
    ],
)
def test_a_malformed_table_is_refused(change: str, words: str) -> None:
    key = change.split(" ")[0]
    lines = [line for line in _table_text().splitlines() if not line.startswith(key + " ")]
    with pytest.raises(PriceTableError, match=words):
        PriceTable.parse("\n".join([*lines, change]))


def _table_text() -> str:
    return """version = 1
[models."m"]
provider = "p"
input_per_mtok = 1
output_per_mtok = 2
per_image = 0
as_of = "2026-11-30"
source = "https://example.invalid/p"
verified = false"""
