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
from dataclasses import replace
from typing import Any

import aiohttp
import openai

from alchemy.config import MediaConfig
from alchemy.errors import JobError, PermanentError, RetryableError
from alchemy.providers.base import ImageRequest, ImageResult, Usage, call_headers, raise_failure
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
    local = False

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

    def warm(self) -> None:
        """Load what the SDK would load on the first call: the resource, and the reply
        type built from a sample as the SDK builds a reply, checked and not. No request
        is sent."""
        _ = self.client.images
        sample: dict[str, Any] = {"created": 0, "data": [{"b64_json": ""}]}
        openai.types.ImagesResponse.construct(**sample)
        openai.types.ImagesResponse.model_validate(sample)

    async def generate(self, request: ImageRequest) -> ImageResult:
        result = await self.send(request)
        raise_failure(result)
        return result

    async def send(self, request: ImageRequest) -> ImageResult:
        params = image_params(request)
        try:
            reply = await self.client.images.generate(
                **params, extra_headers=call_headers(request.call_id)
            )
        except openai.OpenAIError as exc:
            raise map_provider_error(self.name, exc, self._secrets) from exc
        size = reply.size or request.size or image_family(request.model).smallest_size
        usage = Usage()
        if reply.usage is not None:
            usage = Usage(reply.usage.input_tokens, reply.usage.output_tokens)
        paid = ImageResult(
            data=b"",
            mime_type="",
            provider=self.name,
            model=request.model,
            size=size,
            quality=reply.quality or request.quality,
            revised_prompt=reply.data[0].revised_prompt if reply.data else None,
            request_id=getattr(reply, "_request_id", None),
            usage=usage,
            images=len(reply.data or ()),
        )
        try:
            data = await self._image_bytes(reply, request)
        except JobError as exc:  # paid for, and no image to show for it
            return replace(paid, failure=exc)
        mime = sniff_mime(data)
        if mime is None:
            problem = f"openai {request.model}: the image bytes are not PNG/JPEG/WebP"
            failure = RetryableError(problem)
            return replace(paid, failure=failure)
        return replace(paid, data=data, mime_type=mime)

    async def _image_bytes(self, reply: Any, request: ImageRequest) -> bytes:
        if not reply.data:
            raise RetryableError(f"openai {request.model}: the reply held no image")
        image = reply.data[0]
        if image.b64_json:
            try:
                return base64.b64decode(image.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise RetryableError("openai: the image was not valid base64") from None
        if image.url:
            data, _ = await download(
                self.session,
                image.url,
                allowed_hosts=self.media.allowed_hosts,
                max_bytes=self.media.max_download_bytes,
                deadline=self.media.download_timeout,
            )
            return data
        raise RetryableError(f"openai {request.model}: the reply held no image")
