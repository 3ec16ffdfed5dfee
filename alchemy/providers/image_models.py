"""What each family of OpenAI image models accepts (openai 3.57 docstrings).

Pure data and two small functions, so the configuration can check ``[providers] image_*``
at startup without importing an SDK.

    family      models                       sizes                                 quality
    dall-e-3    dall-e-3 (retired 2026-05)   1024x1024 1792x1024 1024x1792         standard hd
    dall-e-2    dall-e-2 (retired 2026-05)   256x256 512x512 1024x1024             -
    gpt-image   gpt-image-*, chatgpt-image-* 1024x1024 1536x1024 1024x1536 auto    low medium
                                                                                   high auto
                                                                                   (+ xhigh max
                                                                                   on 2.5 / 2.6)

Only the DALL-E models take ``style`` (vivid | natural) and ``response_format`` (url |
b64_json); the GPT image models always answer with base64 and never revise the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ImageFamily:
    name: str
    sizes: tuple[str, ...]  # smallest first
    qualities: tuple[str, ...]
    styles: tuple[str, ...]
    takes_response_format: bool

    @property
    def smallest_size(self) -> str:
        return self.sizes[0]


DALL_E_3: Final = ImageFamily(
    "dall-e-3",
    sizes=("1024x1024", "1792x1024", "1024x1792"),
    qualities=("standard", "hd"),
    styles=("vivid", "natural"),
    takes_response_format=True,
)
DALL_E_2: Final = ImageFamily(
    "dall-e-2",
    sizes=("256x256", "512x512", "1024x1024"),
    qualities=("standard",),
    styles=(),
    takes_response_format=True,
)
GPT_IMAGE: Final = ImageFamily(
    "gpt-image",
    sizes=("1024x1024", "1536x1024", "1024x1536", "auto"),
    qualities=("low", "medium", "high", "auto"),
    styles=(),
    takes_response_format=False,
)
_EXTRA_QUALITIES: Final = ("xhigh", "max")


def image_family(model: str) -> ImageFamily:
    if model.startswith("dall-e-3"):
        return DALL_E_3
    if model.startswith("dall-e-2"):
        return DALL_E_2
    return GPT_IMAGE


def qualities_of(model: str) -> tuple[str, ...]:
    family = image_family(model)
    if family is GPT_IMAGE and model.startswith(("gpt-image-2.5", "gpt-image-2.6")):
        return family.qualities + _EXTRA_QUALITIES
    return family.qualities


def image_option_problem(model: str, option: str, value: str) -> str | None:
    """Why ``value`` is not a valid ``option`` (image_size | image_quality | image_style) for
    ``model``, or None. An empty value means "the API's default" and is always valid."""
    if not value:
        return None
    family = image_family(model)
    allowed = {
        "image_size": family.sizes,
        "image_quality": qualities_of(model),
        "image_style": family.styles,
    }[option]
    if value in allowed:
        return None
    if not allowed:
        return f"{model} takes no {option.removeprefix('image_')}; leave it empty"
    return f"{value!r} is not valid for {model}: one of {', '.join(allowed)}"
