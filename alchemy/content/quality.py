"""The quality score of a draft: 0-100, with the breakdown stored next to it.

Six parts, each scored 0.0-1.0 and weighted (weights add up to 100):

    part              weight  1.0 when                                   falls to 0.0
    readability       25      Flesch reading ease inside the platform's   30 points outside
                              band (textstat's formula and dictionary,    the band
                              alchemy.content.readability)
    length            20      word count inside the platform's range      at 0 words, or at
                              (and under its character limit)             twice the maximum;
                                                                          0 over the limit
    keywords          20      every idea keyword appears (title, body,    linear in the share
                              hashtags; case-insensitive)                 found; 1.0 if none
    hashtags          10      count inside the platform's range           1/3 less per tag
                                                                          outside the range
    call_to_action    10      a call to action is present                 0 when empty
    banned_phrases    15      no banned phrase appears (case-insensitive) 0 when any does

score = round(sum(weight * part)), clamped to 0-100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from alchemy.content import readability
from alchemy.content.platforms import Platform

WEIGHTS: Final = {
    "readability": 25,
    "length": 20,
    "keywords": 20,
    "hashtags": 10,
    "call_to_action": 10,
    "banned_phrases": 15,
}
READABILITY_FALLOFF: Final = 30.0
HASHTAG_STEP: Final = 1 / 3


@dataclass(frozen=True, slots=True)
class Draft:
    title: str
    body: str
    hashtags: Sequence[str]
    call_to_action: str


@dataclass(frozen=True, slots=True)
class Quality:
    score: int
    breakdown: dict[str, Any]


def quality_score(
    draft: Draft, platform: Platform, keywords: Sequence[str], banned: Sequence[str]
) -> Quality:
    parts = {
        "readability": readability_part(draft.body, platform),
        "length": length_part(draft.body, platform),
        "keywords": keyword_part(draft, keywords),
        "hashtags": hashtag_part(len(draft.hashtags), platform),
        "call_to_action": cta_part(draft.call_to_action),
        "banned_phrases": banned_part(draft, banned),
    }
    breakdown: dict[str, Any] = {}
    total = 0.0
    for name, (value, detail) in parts.items():
        points = WEIGHTS[name] * value
        total += points
        breakdown[name] = {
            "score": round(value, 4),
            "weight": WEIGHTS[name],
            "points": round(points, 2),
            **detail,
        }
    return Quality(max(0, min(100, round(total))), breakdown)


def readability_part(body: str, platform: Platform) -> tuple[float, dict[str, Any]]:
    low, high = platform.readability
    ease = readability.flesch_reading_ease(body) if body.strip() else 0.0
    distance = max(low - ease, ease - high, 0.0)
    value = max(0.0, 1 - distance / READABILITY_FALLOFF)
    return value, {"flesch_reading_ease": round(ease, 2), "target": [low, high]}


def word_count(text: str) -> int:
    return len(re.findall(r"\b[\w'’-]+\b", text))


def length_part(body: str, platform: Platform) -> tuple[float, dict[str, Any]]:
    words = word_count(body)
    detail: dict[str, Any] = {
        "words": words,
        "target": [platform.min_words, platform.max_words],
        "characters": len(body),
    }
    if platform.max_chars is not None:
        detail["max_characters"] = platform.max_chars
        if len(body) > platform.max_chars:
            return 0.0, detail
    if words < platform.min_words:
        value = words / platform.min_words
    elif words > platform.max_words:
        value = max(0.0, 1 - (words - platform.max_words) / platform.max_words)
    else:
        value = 1.0
    return value, detail


def keyword_part(draft: Draft, keywords: Sequence[str]) -> tuple[float, dict[str, Any]]:
    wanted = [k for k in dict.fromkeys(k.strip() for k in keywords) if k]
    if not wanted:
        return 1.0, {"found": [], "missing": []}
    haystack = " ".join([draft.title, draft.body, *draft.hashtags]).lower()
    squashed = re.sub(r"[\s_-]+", "", haystack)
    found = [
        k for k in wanted if k.lower() in haystack or re.sub(r"[\s_-]+", "", k.lower()) in squashed
    ]
    missing = [k for k in wanted if k not in found]
    return len(found) / len(wanted), {"found": found, "missing": missing}


def hashtag_part(count: int, platform: Platform) -> tuple[float, dict[str, Any]]:
    low, high = platform.hashtags
    distance = max(low - count, count - high, 0)
    value = max(0.0, 1 - distance * HASHTAG_STEP)
    return value, {"count": count, "target": [low, high]}


def cta_part(call_to_action: str) -> tuple[float, dict[str, Any]]:
    present = bool(call_to_action.strip())
    return (1.0 if present else 0.0), {"present": present}


def banned_part(draft: Draft, banned: Sequence[str]) -> tuple[float, dict[str, Any]]:
    text = " ".join([draft.title, draft.body, draft.call_to_action, *draft.hashtags]).lower()
    found = [phrase for phrase in banned if phrase.strip() and phrase.lower() in text]
    return (0.0 if found else 1.0), {"found": found}
