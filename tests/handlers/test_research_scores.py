"""The research scores and merging on fixed inputs (formulas in
alchemy/content/research_scores.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from alchemy.content.research_scores import (
    demand,
    momentum,
    overlap,
    pressure,
    research_scores,
)
from alchemy.handlers.research import merge_research, sections_of


def kw(keyword: str, searches: int, difficulty: int, relevance: int) -> dict[str, Any]:
    return {
        "keyword": keyword,
        "monthly_searches": searches,
        "difficulty": difficulty,
        "relevance": relevance,
        "intent": "informational",
    }


def research(**sections: Any) -> dict[str, Any]:
    return {name: {"data": data} for name, data in sections.items()}


def test_no_research_gives_no_scores() -> None:
    scores = research_scores({}, ["x"])
    assert (scores.virality, scores.relevance, scores.competition) == (None, None, None)


def test_parts() -> None:
    assert momentum([{"momentum": 100}, {"momentum": -100}]) == 50
    assert momentum([{"momentum": 60}]) == 80
    assert demand([{"monthly_searches": 0}]) == 0
    assert demand([{"monthly_searches": 99_999}]) == pytest.approx(100)
    assert demand([{"monthly_searches": 10_000_000}]) == 100
    assert demand([{"monthly_searches": 999}]) == pytest.approx(60)
    assert overlap(["Heat Pumps", "solar"], [kw("heat pumps", 1, 1, 1)]) == 50
    assert overlap([], [kw("a", 1, 1, 1)]) is None
    strengths = [{"strength": s} for s in (90, 80, 70, 60, 50, 10)]
    assert pressure(strengths) == 70  # top 5 mean, full weight at 5+
    assert pressure([{"strength": 80}, {"strength": 60}]) == pytest.approx(70 * 2 / 5)
    assert pressure([]) is None


def test_full_research_on_fixed_values() -> None:
    merged = research(
        keywords={"keywords": [kw("heat pumps", 1000, 60, 90), kw("grants", 100, 40, 70)]},
        trends={
            "trends": [
                {"topic": "a", "momentum": 60, "relevance": 80, "evidence": ""},
                {"topic": "b", "momentum": 20, "relevance": 60, "evidence": ""},
            ]
        },
        competitors={
            "competitors": [{"name": "A", "url": "", "strength": 80, "angle": "", "gap": ""}],
            "saturation": 50,
        },
    )
    scores = research_scores(merged, ["heat pumps", "solar"])
    demand_value = 20 * math.log10(1 + 550)
    assert scores.parts["demand"] == pytest.approx(demand_value)
    assert scores.virality == round(0.6 * 70 + 0.4 * demand_value)  # 64
    assert scores.relevance == round(0.7 * 75 + 0.3 * 50)  # 68 (67.5 rounds to even: 68)
    assert scores.competition == round(0.4 * 50 + 0.4 * 16 + 0.2 * 50)  # 36
    assert scores.to_json()["parts"]["pressure"] == 16.0


def test_missing_parts_are_left_out_of_the_mean() -> None:
    only_trends = research(
        trends={"trends": [{"topic": "a", "momentum": 100, "relevance": 40, "evidence": ""}]}
    )
    scores = research_scores(only_trends, ["x"])
    assert scores.virality == 100  # momentum alone, demand unknown
    assert scores.relevance == 40  # fit alone: no keyword research to overlap with
    assert scores.competition is None


def test_scores_are_clamped() -> None:
    merged = research(keywords={"keywords": [kw("a", 10**12, 100, 100)]})
    scores = research_scores(merged, ["a"])
    assert (scores.virality, scores.relevance, scores.competition) == (100, 100, 100)


def test_a_later_run_replaces_only_its_own_sections() -> None:
    current = {"keywords": {"data": {"keywords": []}, "job_id": "j1"}}
    trends = {"trends": [{"topic": "t", "momentum": 1, "relevance": 2, "evidence": "e"}]}
    merged = merge_research(current, "trends", trends, {"job_id": "j2"})
    assert merged == {
        "keywords": {"data": {"keywords": []}, "job_id": "j1"},
        "trends": {"data": trends, "job_id": "j2"},
    }
    assert current == {"keywords": {"data": {"keywords": []}, "job_id": "j1"}}  # not mutated


def test_a_full_reply_is_split_into_three_sections() -> None:
    full = {"keywords": [1], "competitors": [2], "saturation": 30, "trends": [3]}
    assert sections_of("full", full) == {
        "keywords": {"keywords": [1]},
        "competitors": {"competitors": [2], "saturation": 30},
        "trends": {"trends": [3]},
    }
