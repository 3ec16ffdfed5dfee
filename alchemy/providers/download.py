"""Downloading an image URL from an API reply, without becoming an SSRF proxy.

Only hosts on ``[media] allowed_hosts`` are fetched (a bare host means https on its default
port; an origin such as ``http://127.0.0.1:8080`` allows exactly that), redirects are not
followed, the body is capped at ``max_download_bytes`` while it streams, and the whole
download has a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from alchemy.errors import PermanentError, RetryableError

CHUNK: Final = 65_536
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


def parse_allowed(entry: str) -> Origin:
    text = entry if "://" in entry else f"https://{entry}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    return Origin(scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS[scheme])


def url_origin(url: str) -> Origin | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return Origin(scheme, parts.hostname.lower(), parts.port or DEFAULT_PORTS[scheme])
    except ValueError:
        return None


def is_allowed(url: str, allowed_hosts: Sequence[str]) -> bool:
    origin = url_origin(url)
    return origin is not None and origin in {parse_allowed(entry) for entry in allowed_hosts}


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allowed_hosts: Sequence[str],
    max_bytes: int,
    deadline: float,
) -> tuple[bytes, str]:
    """The body and content type at ``url``; raises job errors for every failure."""
    origin = url_origin(url)
    if origin is None or not is_allowed(url, allowed_hosts):
        where = f"{origin.scheme}://{origin.host}:{origin.port}" if origin else "an invalid URL"
        raise PermanentError(f"image URL host not allowed ({where}); see [media] allowed_hosts")
    try:
        async with asyncio.timeout(deadline):
            return await _fetch(session, url, max_bytes)
    except TimeoutError:
        raise RetryableError(f"image download timed out after {deadline:g}s") from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"image download failed: {type(exc).__name__}") from None


async def _fetch(session: aiohttp.ClientSession, url: str, max_bytes: int) -> tuple[bytes, str]:
    async with session.get(url, allow_redirects=False) as response:
        if response.status != 200:
            # An expired or missing URL: a new attempt generates a new image.
            raise RetryableError(f"image download answered HTTP {response.status}")
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise PermanentError(f"image is {declared} bytes, over the {max_bytes} byte cap")
        body = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK):
            body.extend(chunk)
            if len(body) > max_bytes:
                raise PermanentError(f"image is over the {max_bytes} byte cap")
        return bytes(body), response.content_type
