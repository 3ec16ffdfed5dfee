"""Prompts for content and research, built from the brand and the idea.

Pure functions of their inputs, so they are tested on fixed values. The reply's shape is
enforced by the JSON schema sent with the request; the prompt says what to write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from alchemy.content.platforms import Platform

MAX_RESEARCH_ITEMS: Final = 8  # research entries quoted back into a content prompt


@dataclass(frozen=True, slots=True)
class Brand:
    name: str
    voice: str = ""
    tone: str = ""
    audience: str = ""
    guidelines: str = ""
    banned_phrases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Idea:
    title: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    research: Mapping[str, Any] = field(default_factory=dict)


def _lines(pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"- {label}: {value}" for label, value in pairs if value)


def brand_brief(brand: Brand) -> str:
    facts = _lines(
        [
            ("Brand", brand.name),
            ("Voice", brand.voice),
            ("Tone", brand.tone),
            ("Audience", brand.audience),
            ("Guidelines", brand.guidelines),
        ]
    )
    if brand.banned_phrases:
        banned = "; ".join(f'"{p}"' for p in brand.banned_phrases)
        facts += f"\n- Never use these phrases: {banned}"
    return facts


def research_notes(research: Mapping[str, Any]) -> str:
    """The useful part of an idea's research JSON, as short prompt lines."""
    notes = []
    keywords = _section(research, "keywords", "keywords")
    if keywords:
        top = sorted(keywords, key=lambda k: -int(k.get("relevance", 0)))[:MAX_RESEARCH_ITEMS]
        notes.append("Keywords people search for: " + ", ".join(str(k["keyword"]) for k in top))
    trends = _section(research, "trends", "trends")
    if trends:
        rising = [t for t in trends if int(t.get("momentum", 0)) > 0][:MAX_RESEARCH_ITEMS]
        if rising:
            notes.append("Rising trends: " + ", ".join(str(t["topic"]) for t in rising))
    competitors = _section(research, "competitors", "competitors")
    if competitors:
        gaps = [str(c["gap"]) for c in competitors if c.get("gap")][:MAX_RESEARCH_ITEMS]
        if gaps:
            notes.append("Gaps competitors leave: " + "; ".join(gaps))
    return "\n".join(f"- {note}" for note in notes)


def _section(research: Mapping[str, Any], section: str, key: str) -> list[Mapping[str, Any]]:
    entry = research.get(section)
    if not isinstance(entry, Mapping):
        return []
    data = entry.get("data", {})
    items = data.get(key) if isinstance(data, Mapping) else None
    return [item for item in items or [] if isinstance(item, Mapping)]


def content_prompt(
    brand: Brand, idea: Idea, platform: Platform, options: Mapping[str, Any]
) -> tuple[str, str]:
    """(system prompt, user prompt) for one piece of content."""
    system = (
        f"You are the content writer for {brand.name}. Write in the brand's voice and tone,"
        " for its audience, and follow its guidelines exactly. Reply with JSON only."
        f"\n\n{brand_brief(brand)}"
    )
    low, high = platform.hashtags
    words = options.get("words")
    length = f"about {words} words" if words else f"{platform.min_words}-{platform.max_words} words"
    limits = [f"Length: {length}."]
    if platform.max_chars:
        limits.append(f"The body must stay under {platform.max_chars} characters.")
    limits.append("No hashtags." if high == 0 else f"Hashtags: {low}-{high}, without the # sign.")
    parts = [
        f"Write {platform.format} about this idea.",
        f"Idea: {idea.title}",
        f"Details: {idea.description}" if idea.description else "",
        f"Work in these keywords naturally: {', '.join(idea.keywords)}" if idea.keywords else "",
        research_notes(idea.research),
        " ".join(limits),
        "End with a clear call to action.",
        f"Extra instructions: {options['instructions']}" if options.get("instructions") else "",
    ]
    return system, "\n".join(part for part in parts if part)


RESEARCH_ASKS: Final = {
    "keywords": (
        "Find the search keywords people use for this idea: estimated monthly searches,"
        " ranking difficulty (0-100), relevance to the brand and its audience (0-100), and"
        " search intent."
    ),
    "competitors": (
        "Find who already publishes on this idea: their name and URL, how strong their"
        " coverage is (0-100), their angle and the gap the brand could own; and how crowded"
        " the topic is overall (saturation, 0-100)."
    ),
    "trends": (
        "Find the trends around this idea: each with its momentum (-100 falling to 100"
        " rising), its relevance to the brand (0-100) and the evidence."
    ),
}


def research_prompt(brand: Brand, idea: Idea, research_type: str) -> tuple[str, str]:
    """(system prompt, user prompt) for one research run (``full`` asks for all three)."""
    system = (
        "You are a content strategist doing market research for a brand. Be concrete and"
        " honest about uncertainty; estimates are fine. Reply with JSON only."
        f"\n\n{brand_brief(brand)}"
    )
    types = list(RESEARCH_ASKS) if research_type == "full" else [research_type]
    parts = [
        f"Idea: {idea.title}",
        f"Details: {idea.description}" if idea.description else "",
        f"Keywords so far: {', '.join(idea.keywords)}" if idea.keywords else "",
        *(RESEARCH_ASKS[t] for t in types),
    ]
    return system, "\n".join(part for part in parts if part)
