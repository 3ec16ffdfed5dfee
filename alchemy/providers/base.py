"""The provider interface: what a handler asks for and what it gets back.

A text provider turns a :class:`TextRequest` (system prompt, user prompt, the pydantic model
the reply must match) into a :class:`TextResult` holding the raw text; turning that text
into a validated object, with one repair round, is :mod:`alchemy.providers.structured`.
An image provider turns an :class:`ImageRequest` into the image's bytes.

Each provider has two calls: ``send`` returns every reply the API answered (and so billed),
with ``failure`` set when the reply cannot be used (a refusal, a reply cut off, an image
that could not be read), so the ledger of paid calls (:mod:`alchemy.paid`) sees its usage;
``generate`` is ``send`` that raises that failure.

Providers raise only :mod:`alchemy.errors` job errors (see :mod:`alchemy.providers.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel

from alchemy.errors import JobError, PermanentError

TEXT_PROVIDERS = ("anthropic", "openai", "offline")
CALL_HEADER = "X-Alchemy-Call"
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
    call_id: str = ""  # the ledger's id of this call, sent as the X-Alchemy-Call header


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
    request_id: str | None = None  # the API's id of the request, when it sent one
    failure: JobError | None = None  # why this (paid) reply cannot be used


class TextProvider(Protocol):
    name: str
    local: bool  # answers in-process, without a network round trip (offline)

    async def send(self, request: TextRequest) -> TextResult:
        """One API call; a reply that cannot be used comes back with ``failure`` set."""
        ...

    async def generate(self, request: TextRequest) -> TextResult:
        """:meth:`send`, raising the failure of a reply that cannot be used."""
        ...


@dataclass(frozen=True, slots=True)
class ImageRequest:
    prompt: str
    model: str
    size: str = ""  # "" = the provider's default
    quality: str = ""
    style: str = ""
    call_id: str = ""  # the ledger's id of this call, sent as the X-Alchemy-Call header


@dataclass(frozen=True, slots=True)
class ImageResult:
    data: bytes
    mime_type: str
    provider: str
    model: str
    size: str
    quality: str
    revised_prompt: str | None = None
    request_id: str | None = None
    usage: Usage = Usage()  # GPT image models count tokens: text in, image out
    failure: JobError | None = None  # why this (paid) reply gave no usable image
    images: int = 1  # images the API made (and billed) for the call


class ImageProvider(Protocol):
    name: str
    local: bool

    async def send(self, request: ImageRequest) -> ImageResult:
        """One API call; a reply without a usable image comes back with ``failure`` set."""
        ...

    async def generate(self, request: ImageRequest) -> ImageResult:
        """:meth:`send`, raising the failure of a reply without a usable image."""
        ...


def call_headers(call_id: str) -> dict[str, str] | None:
    """The extra request header naming the ledger's call (real APIs ignore it)."""
    return {CALL_HEADER: call_id} if call_id else None


def raise_failure(result: TextResult | ImageResult) -> None:
    if result.failure is not None:
        raise result.failure


class ProviderRefusedError(PermanentError):
    """The model declined the request (a refusal or a content filter)."""


class ContentPolicyError(ProviderRefusedError):
    """The provider's content policy or moderation blocked the request."""


class OutputInvalidError(PermanentError):
    """The model's reply could not be used; ``raw_text`` keeps it for diagnosis."""

    def __init__(self, message: str, *, raw_text: str) -> None:
        super().__init__(message)
        self.raw_text = raw_text
