"""Images through ``openai.AsyncOpenAI``'s images API, for both request shapes.

* GPT image models (``gpt-image-1.5``, ``gpt-image-2``...): size and quality of their own,
  no style, no ``response_format``; the reply is always base64 with no revised prompt.
* DALL-E 3 shape (retired by OpenAI, still spoken by compatible endpoints): size, quality
  (standard | hd) and style (vivid | natural); the reply is a URL (downloaded through the
  allow-list, :mod:`alchemy.providers.download`) or base64, with a revised prompt.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import aiohttp
import openai

from alchemy.config import MediaConfig
from alchemy.errors import PermanentError, RetryableError
from alchemy.providers.base import ImageRequest, ImageResult
from alchemy.providers.download import download
from alchemy.providers.errors import map_provider_error
from alchemy.providers.image_models import image_family, image_option_problem


def sniff_mime(data: bytes) -> str | None:
    """The image type from its first bytes (PNG, JPEG, WebP, GIF), or None. The bytes
    decide, not a declared content type or output format."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def image_params(request: ImageRequest) -> dict[str, Any]:
    """The keyword arguments of ``images.generate`` for the request's model family."""
    for option, value in (
        ("image_size", request.size),
        ("image_quality", request.quality),
        ("image_style", request.style),
    ):
        problem = image_option_problem(request.model, option, value)
        if problem:
            raise PermanentError(f"image request: {problem}")
    params: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "n": 1}
    if request.size:
        params["size"] = request.size
    if request.quality:
        params["quality"] = request.quality
    if request.style:
        params["style"] = request.style
    return params


class OpenAIImages:
    name = "openai"

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        media: MediaConfig,
        session: aiohttp.ClientSession,
        *,
        secrets: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.media = media
        self.session = session
        self._secrets = tuple(secrets)

    async def generate(self, request: ImageRequest) -> ImageResult:
        params = image_params(request)
        try:
            reply = await self.client.images.generate(**params)
        except openai.OpenAIError as exc:
            raise map_provider_error(self.name, exc, self._secrets) from exc
        if not reply.data:
            raise RetryableError(f"openai {request.model}: the reply held no image")
        image = reply.data[0]
        if image.b64_json:
            try:
                data = base64.b64decode(image.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise RetryableError("openai: the image was not valid base64") from None
        elif image.url:
            data, _ = await download(
                self.session,
                image.url,
                allowed_hosts=self.media.allowed_hosts,
                max_bytes=self.media.max_download_bytes,
                deadline=self.media.download_timeout,
            )
        else:
            raise RetryableError(f"openai {request.model}: the reply held no image")
        mime = sniff_mime(data)
        if mime is None:
            raise RetryableError(f"openai {request.model}: the image bytes are not PNG/JPEG/WebP")
        size = reply.size or request.size or image_family(request.model).smallest_size
        return ImageResult(
            data=data,
            mime_type=mime,
            provider=self.name,
            model=request.model,
            size=size,
            quality=reply.quality or request.quality,
            revised_prompt=image.revised_prompt,
        )
