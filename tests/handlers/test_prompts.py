"""Prompt building on fixed inputs."""

from __future__ import annotations

from alchemy.content.platforms import platform_for
from alchemy.content.prompts import Brand, Idea, content_prompt, research_notes, research_prompt

BRAND = Brand(
    name="Northwind",
    voice="plain-spoken expert",
    tone="warm",
    audience="homeowners",
    guidelines="Use metric units.",
    banned_phrases=("game changer", "synergy"),
)
RESEARCH = {
    "keywords": {
        "data": {
            "keywords": [
                {"keyword": "low", "relevance": 10},
                {"keyword": "high", "relevance": 90},
            ]
        }
    },
    "trends": {
        "data": {
            "trends": [{"topic": "rising", "momentum": 40}, {"topic": "falling", "momentum": -5}]
        }
    },
    "competitors": {"data": {"competitors": [{"gap": "nobody covers installation costs"}]}},
}
IDEA = Idea("Heat pumps in the cold", "Why they work", ("heat pumps", "energy"), RESEARCH)


def test_content_prompt_carries_brand_idea_research_and_format() -> None:
    system, prompt = content_prompt(BRAND, IDEA, platform_for("twitter"), {})
    assert system.startswith("You are the content writer for Northwind.")
    assert "- Voice: plain-spoken expert" in system
    assert "- Tone: warm" in system
    assert "- Audience: homeowners" in system
    assert "- Guidelines: Use metric units." in system
    assert '- Never use these phrases: "game changer"; "synergy"' in system
    assert prompt.splitlines() == [
        "Write a single post on X (Twitter) about this idea.",
        "Idea: Heat pumps in the cold",
        "Details: Why they work",
        "Work in these keywords naturally: heat pumps, energy",
        "- Keywords people search for: high, low",
        "- Rising trends: rising",
        "- Gaps competitors leave: nobody covers installation costs",
        "Length: 10-50 words. The body must stay under 280 characters."
        " Hashtags: 1-2, without the # sign.",
        "End with a clear call to action.",
    ]


def test_content_prompt_options_and_a_platform_without_hashtags() -> None:
    bare = Idea("Solar", keywords=())
    _, prompt = content_prompt(
        Brand("B"), bare, platform_for("newsletter"), {"words": 400, "instructions": "Be brief."}
    )
    assert "Length: about 400 words. No hashtags." in prompt
    assert "Extra instructions: Be brief." in prompt
    assert "keywords" not in prompt.lower()


def test_brand_with_only_a_name_has_no_empty_lines() -> None:
    system, _ = content_prompt(Brand("B"), Idea("t"), platform_for("blog"), {})
    assert system.endswith("- Brand: B")


def test_research_notes_ignore_malformed_sections() -> None:
    assert research_notes({"keywords": "junk", "trends": {"data": []}}) == ""


def test_research_prompt_asks_for_one_type_or_all() -> None:
    _, keywords = research_prompt(BRAND, IDEA, "keywords")
    assert "monthly searches" in keywords
    assert "competitor" not in keywords.lower()
    _, full = research_prompt(BRAND, IDEA, "full")
    for words in ("monthly searches", "saturation", "momentum"):
        assert words in full
    assert "Keywords so far: heat pumps, energy" in full
