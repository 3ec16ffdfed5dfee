"""Virality, relevance and competition scores (0-100) from an idea's merged research.

Every formula uses only what research has found so far; a part with no data is left out
of its weighted mean (its weight is redistributed), and a score with no data at all is
``None`` (stored as NULL).

    momentum    = mean over trends of (momentum + 100) / 2                  (0-100)
    demand      = min(100, 20 * log10(1 + mean monthly searches of keywords))
                  (10 searches ~ 21, 1,000 ~ 60, 100,000 ~ 100)
    virality    = weighted mean of momentum (0.6) and demand (0.4)

    fit         = mean relevance over keywords and trends                    (0-100)
    overlap     = 100 * share of the idea's own keywords that research found
                  (case-insensitive; left out when the idea has no keywords)
    relevance   = weighted mean of fit (0.7) and overlap (0.3)

    difficulty  = mean keyword difficulty                                    (0-100)
    pressure    = mean strength of the 5 strongest competitors * min(1, n / 5)
    saturation  = the model's saturation estimate                            (0-100)
    competition = weighted mean of difficulty (0.4), pressure (0.4), saturation (0.2)

Each score is rounded to the nearest integer (halves to even, as Python rounds) and
clamped to 0-100.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

TOP_COMPETITORS: Final = 5


@dataclass(frozen=True, slots=True)
class ResearchScores:
    virality: int | None
    relevance: int | None
    competition: int | None
    parts: dict[str, float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "virality": self.virality,
            "relevance": self.relevance,
            "competition": self.competition,
            "parts": {k: None if v is None else round(v, 2) for k, v in self.parts.items()},
        }


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _weighted(parts: Sequence[tuple[float | None, float]]) -> int | None:
    present = [(value, weight) for value, weight in parts if value is not None]
    if not present:
        return None
    total = sum(weight for _, weight in present)
    score = sum(value * weight for value, weight in present) / total
    return max(0, min(100, round(score)))


def _items(research: Mapping[str, Any], section: str) -> list[Mapping[str, Any]]:
    entry = research.get(section)
    data = entry.get("data") if isinstance(entry, Mapping) else None
    items = data.get(section) if isinstance(data, Mapping) else None
    return [item for item in items or [] if isinstance(item, Mapping)]


def _saturation(research: Mapping[str, Any]) -> float | None:
    entry = research.get("competitors")
    data = entry.get("data") if isinstance(entry, Mapping) else None
    value = data.get("saturation") if isinstance(data, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


def momentum(trends: Sequence[Mapping[str, Any]]) -> float | None:
    return _mean((float(t["momentum"]) + 100) / 2 for t in trends)


def demand(keywords: Sequence[Mapping[str, Any]]) -> float | None:
    mean = _mean(float(k["monthly_searches"]) for k in keywords)
    return None if mean is None else min(100.0, 20 * math.log10(1 + mean))


def fit(keywords: Sequence[Mapping[str, Any]], trends: Sequence[Mapping[str, Any]]) -> float | None:
    return _mean(float(item["relevance"]) for item in [*keywords, *trends])


def overlap(idea_keywords: Sequence[str], keywords: Sequence[Mapping[str, Any]]) -> float | None:
    own = {k.strip().lower() for k in idea_keywords if k.strip()}
    if not own or not keywords:
        return None
    found = {str(k["keyword"]).strip().lower() for k in keywords}
    return 100 * len(own & found) / len(own)


def pressure(competitors: Sequence[Mapping[str, Any]]) -> float | None:
    strengths = sorted((float(c["strength"]) for c in competitors), reverse=True)
    if not strengths:
        return None
    top = strengths[:TOP_COMPETITORS]
    return (sum(top) / len(top)) * min(1.0, len(strengths) / TOP_COMPETITORS)


def research_scores(research: Mapping[str, Any], idea_keywords: Sequence[str]) -> ResearchScores:
    keywords = _items(research, "keywords")
    trends = _items(research, "trends")
    competitors = _items(research, "competitors")
    parts = {
        "momentum": momentum(trends),
        "demand": demand(keywords),
        "fit": fit(keywords, trends),
        "overlap": overlap(idea_keywords, keywords),
        "difficulty": _mean(float(k["difficulty"]) for k in keywords),
        "pressure": pressure(competitors),
        "saturation": _saturation(research),
    }
    return ResearchScores(
        virality=_weighted([(parts["momentum"], 0.6), (parts["demand"], 0.4)]),
        relevance=_weighted([(parts["fit"], 0.7), (parts["overlap"], 0.3)]),
        competition=_weighted(
            [(parts["difficulty"], 0.4), (parts["pressure"], 0.4), (parts["saturation"], 0.2)]
        ),
        parts=parts,
    )
