"""The platforms content is written for: format, length and hashtag expectations.

The quality score's length and hashtag parts measure a draft against these, and the
prompt tells the model the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alchemy.errors import PermanentError


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    format: str  # what the piece is, for the prompt
    min_words: int
    max_words: int
    hashtags: tuple[int, int]  # (fewest, most) hashtags that fit the platform
    readability: tuple[float, float]  # Flesch reading ease band that suits the audience
    max_chars: int | None = None  # a hard limit on the body, where the platform has one


PLATFORMS: Final[dict[str, Platform]] = {
    p.name: p
    for p in (
        Platform("twitter", "a single post on X (Twitter)", 10, 50, (1, 2), (60, 90), 280),
        Platform("linkedin", "a LinkedIn post", 80, 250, (3, 5), (45, 70)),
        Platform("instagram", "an Instagram caption", 30, 150, (5, 15), (60, 90), 2200),
        Platform("facebook", "a Facebook post", 40, 150, (0, 3), (60, 85)),
        Platform("tiktok", "a TikTok video caption with a hook", 10, 60, (3, 6), (65, 95), 2200),
        Platform("youtube", "a YouTube video description", 100, 300, (2, 5), (55, 80)),
        Platform("blog", "a blog article in Markdown", 600, 1500, (0, 5), (50, 70)),
        Platform("newsletter", "an email newsletter issue", 250, 700, (0, 0), (55, 75)),
    )
}
ALIASES: Final = {"x": "twitter", "article": "blog", "email": "newsletter"}


def platform_for(name: str) -> Platform:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        return PLATFORMS[key]
    except KeyError:
        known = ", ".join(sorted(PLATFORMS))
        raise PermanentError(f"unknown platform {name!r}: one of {known}") from None
