"""The provider interface: what a handler asks for and what it gets back.

A text provider turns a :class:`TextRequest` (system prompt, user prompt, the pydantic model
the reply must match) into a :class:`TextResult` holding the raw text; turning that text
into a validated object, with one repair round, is :mod:`alchemy.providers.structured`.
An image provider turns an :class:`ImageRequest` into the image's bytes.

Providers raise only :mod:`alchemy.errors` job errors (see :mod:`alchemy.providers.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from alchemy.errors import PermanentError

TEXT_PROVIDERS = ("anthropic", "openai", "offline")
IMAGE_PROVIDERS = ("openai", "offline")


@dataclass(frozen=True, slots=True)
class Repair:
    """A second round: the reply that did not validate and why."""

    previous_text: str
    problem: str


@dataclass(frozen=True, slots=True)
class TextRequest:
    system: str
    prompt: str
    output: type[BaseModel]
    model: str
    subject: str = ""  # a short label (the idea's title) for offline drafts and logs
    max_tokens: int | None = None
    repair: Repair | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class TextResult:
    text: str
    provider: str
    model: str
    usage: Usage
    stop_reason: str


class TextProvider(Protocol):
    name: str

    async def generate(self, request: TextRequest) -> TextResult: ...


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    model: str
    size: str = ""  # "" = the provider's default
    quality: str = ""
    style: str = ""


@dataclass(frozen=True, slots=True)
class ImageResult:
    data: bytes
    mime_type: str
    provider: str
    model: str
    size: str
    quality: str
    revised_prompt: str | None = None


class ImageProvider(Protocol):
    name: str

    async def generate(self, request: ImageRequest) -> ImageResult: ...


class ProviderRefusedError(PermanentError):
    """The model declined the request (a refusal or a content filter)."""


class ContentPolicyError(ProviderRefusedError):
    """The provider's content policy or moderation blocked the request."""


class OutputInvalidError(PermanentError):
    """The model's reply could not be used; ``raw_text`` keeps it for diagnosis."""

    def __init__(self, message: str, *, raw_text: str) -> None:
        super().__init__(message)
        self.raw_text = raw_text
