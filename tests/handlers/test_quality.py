"""The quality score on fixed inputs: every part, the weights, the total."""

from __future__ import annotations

import random

import pytest
import textstat

from alchemy.content import readability
from alchemy.content.platforms import platform_for
from alchemy.content.quality import (
    WEIGHTS,
    Draft,
    banned_part,
    hashtag_part,
    keyword_part,
    length_part,
    quality_score,
    readability_part,
    word_count,
)
from alchemy.errors import PermanentError

BODY = (
    "Cold climate heat pumps now keep homes warm when it is freezing outside. They move heat"
    " instead of making it, so your bills drop. Our installers have fitted hundreds in the"
    " north. Ask us how a heat pump fits your home."
)
DRAFT = Draft("Heat pumps keep working at -20 °C", BODY, ["HeatPumps", "energy"], "Book a check.")
TWITTER = platform_for("twitter")
LINKEDIN = platform_for("linkedin")


def test_weights_add_up_to_100() -> None:
    assert sum(WEIGHTS.values()) == 100


def test_full_score_on_a_fixed_draft() -> None:
    quality = quality_score(DRAFT, TWITTER, ["heat pumps", "energy", "grants"], ["game changer"])
    b = quality.breakdown
    assert b["length"] == {
        "score": 1.0,
        "weight": 20,
        "points": 20.0,
        "words": 41,
        "target": [10, 50],
        "characters": len(BODY),
        "max_characters": 280,
    }
    assert b["keywords"]["found"] == ["heat pumps", "energy"]
    assert b["keywords"]["missing"] == ["grants"]
    assert b["keywords"]["points"] == pytest.approx(13.33)
    assert b["hashtags"]["points"] == 10.0
    assert b["call_to_action"]["points"] == 10.0
    assert b["banned_phrases"]["points"] == 15.0
    ease = textstat.flesch_reading_ease(BODY)
    assert b["readability"]["flesch_reading_ease"] == pytest.approx(ease, abs=0.01)
    expected_readability = 25 * max(0.0, 1 - max(60 - ease, ease - 90, 0) / 30)
    total = expected_readability + 20 + 20 * 2 / 3 + 10 + 10 + 15
    assert quality.score == round(total)
    assert sum(part["points"] for part in b.values()) == pytest.approx(total, abs=0.05)


@pytest.mark.parametrize(
    ("ease", "expected"),
    [(75.0, 1.0), (60.0, 1.0), (45.0, 0.5), (105.0, 0.5), (20.0, 0.0), (150.0, 0.0)],
)
def test_readability_falls_off_over_30_points_outside_the_band(
    monkeypatch: pytest.MonkeyPatch, ease: float, expected: float
) -> None:
    monkeypatch.setattr(readability, "flesch_reading_ease", lambda _text: ease)
    instagram = platform_for("instagram")
    assert instagram.readability == (60, 90)
    value, detail = readability_part("Some text.", instagram)
    assert value == pytest.approx(expected)
    assert detail == {"flesch_reading_ease": ease, "target": [60, 90]}


def test_an_empty_body_is_unreadable() -> None:
    assert readability_part("   ", TWITTER)[0] == 0.0


@pytest.mark.parametrize(
    ("words", "expected"),
    [(0, 0.0), (40, 0.5), (80, 1.0), (250, 1.0), (375, 0.5), (500, 0.0), (900, 0.0)],
)
def test_length_fit(words: int, expected: float) -> None:
    value, detail = length_part(" ".join(["word"] * words), LINKEDIN)
    assert value == pytest.approx(expected)
    assert detail["words"] == words


def test_over_the_platforms_character_limit_scores_zero() -> None:
    value, detail = length_part("word " * 49 + "x" * 100, TWITTER)
    assert detail["characters"] > 280
    assert value == 0.0


def test_keyword_coverage_ignores_case_spaces_and_the_hash_sign() -> None:
    draft = Draft("Title", "All about ENERGY.", ["HeatPumps"], "")
    value, detail = keyword_part(draft, ["heat pumps", "energy", "solar", "energy"])
    assert detail == {"found": ["heat pumps", "energy"], "missing": ["solar"]}
    assert value == pytest.approx(2 / 3)
    assert keyword_part(draft, [])[0] == 1.0


@pytest.mark.parametrize(
    ("count", "expected"), [(3, 1.0), (5, 1.0), (2, 2 / 3), (6, 2 / 3), (0, 0.0), (9, 0.0)]
)
def test_hashtag_count(count: int, expected: float) -> None:
    assert hashtag_part(count, LINKEDIN)[0] == pytest.approx(expected)


def test_banned_phrases_anywhere_zero_the_part() -> None:
    draft = Draft("A Game Changer", "body", [], "")
    assert banned_part(draft, ["game changer", "synergy"]) == (0.0, {"found": ["game changer"]})
    assert banned_part(draft, ["synergy"]) == (1.0, {"found": []})


def test_no_call_to_action_loses_its_points() -> None:
    quality = quality_score(Draft("t", BODY, ["a"], "  "), TWITTER, [], [])
    assert quality.breakdown["call_to_action"] == {
        "score": 0.0,
        "weight": 10,
        "points": 0.0,
        "present": False,
    }


def test_word_count_and_platform_names() -> None:
    assert word_count("It's a well-known fact — heat pumps work.") == 7
    assert platform_for("X").name == "twitter"
    assert platform_for(" Blog ").name == "blog"
    with pytest.raises(PermanentError, match="unknown platform 'myspace'"):
        platform_for("myspace")


def test_reading_ease_is_textstats_figure_from_a_smaller_table() -> None:
    """The same value as textstat (en_US) on words in the CMU dictionary, words outside it
    (pyphen), punctuation, contractions, hyphens and several sentences."""
    rng = random.Random(12)
    words = readability.load().words()[::7]
    texts = [BODY, "Hello world", "A. B. C.", "Xyzzyq blorf! Gnarfle-wozzle isn't d'artagnan's?"]
    for n in range(300):
        picked = [rng.choice(words) for _ in range(rng.randint(1, 40))] + [f"qwzxt{n}"]
        marks = [rng.choice([" ", " ", " ", ". ", ", ", "! ", "? ", " - "]) for _ in picked]
        texts.append("".join(w + m for w, m in zip(picked, marks, strict=True)).capitalize())
    for text in texts:
        assert readability.flesch_reading_ease(text) == textstat.flesch_reading_ease(text), text
