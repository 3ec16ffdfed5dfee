"""The shapes of the models' replies (sent as JSON schemas, validated with pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentDraft(_Reply):
    title: str = Field(min_length=1, description="headline or title of the piece")
    body: str = Field(min_length=1, description="the full text, ready to publish")
    hashtags: list[str] = Field(description="hashtags without the # sign")
    call_to_action: str = Field(description="one sentence asking the reader to act")
    hook: str = Field(description="the opening line that makes people stop scrolling")
    image_prompt: str = Field(description="a description of an image to go with the piece")


class Keyword(_Reply):
    keyword: str = Field(min_length=1)
    monthly_searches: int = Field(ge=0, description="estimated monthly searches")
    difficulty: int = Field(ge=0, le=100, description="how hard it is to rank for, 0-100")
    relevance: int = Field(ge=0, le=100, description="how well it fits the brand, 0-100")
    intent: Literal["informational", "commercial", "transactional", "navigational"]


class KeywordResearch(_Reply):
    keywords: list[Keyword]


class Competitor(_Reply):
    name: str = Field(min_length=1)
    url: str
    strength: int = Field(ge=0, le=100, description="how well they already cover it, 0-100")
    angle: str = Field(description="their take on the topic")
    gap: str = Field(description="what they miss that the brand could own")


class CompetitorResearch(_Reply):
    competitors: list[Competitor]
    saturation: int = Field(ge=0, le=100, description="how crowded the topic is, 0-100")


class Trend(_Reply):
    topic: str = Field(min_length=1)
    momentum: int = Field(ge=-100, le=100, description="falling (-100) to rising (100)")
    relevance: int = Field(ge=0, le=100, description="how well it fits the brand, 0-100")
    evidence: str = Field(description="why you think so")


class TrendResearch(_Reply):
    trends: list[Trend]


class FullResearch(_Reply):
    keywords: list[Keyword]
    competitors: list[Competitor]
    saturation: int = Field(ge=0, le=100, description="how crowded the topic is, 0-100")
    trends: list[Trend]


RESEARCH_MODELS: dict[str, type[_Reply]] = {
    "keywords": KeywordResearch,
    "competitors": CompetitorResearch,
    "trends": TrendResearch,
    "full": FullResearch,
}
