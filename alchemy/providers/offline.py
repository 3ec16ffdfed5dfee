"""The ``offline`` provider: deterministic drafts and placeholder images with no network.

For development (the shipped config.toml selects it, so ``make run`` works without API
keys). Every string it writes starts with ``[OFFLINE DRAFT]`` and every image says
OFFLINE, so its output is never mistaken for a model's. The same prompt always gives the
same output.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any, Final

from alchemy.providers.base import ImageRequest, ImageResult, TextRequest, TextResult, Usage
from alchemy.providers.image_models import image_family

MARK: Final = "[OFFLINE DRAFT]"
MODEL: Final = "offline-1"


def _seed(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


class OfflineText:
    name = "offline"
    local = True

    async def generate(self, request: TextRequest) -> TextResult:
        return await self.send(request)

    async def send(self, request: TextRequest) -> TextResult:
        schema = request.output.model_json_schema()
        maker = _Instance(schema.get("$defs", {}), request.subject or "this idea")
        value = maker.make(schema, "reply", _seed(request.system, request.prompt))
        text = json.dumps(value, ensure_ascii=False)
        usage = Usage(len(request.prompt) // 4, len(text) // 4)
        return TextResult(text, self.name, MODEL, usage, "end_turn")


class _Instance:
    """A value matching a pydantic JSON schema, chosen deterministically from a seed."""

    def __init__(self, defs: dict[str, Any], subject: str) -> None:
        self.defs = defs
        self.subject = subject

    def make(self, schema: dict[str, Any], name: str, seed: int) -> Any:
        if "$ref" in schema:
            return self.make(self.defs[schema["$ref"].rsplit("/", 1)[-1]], name, seed)
        if "enum" in schema:
            return schema["enum"][seed % len(schema["enum"])]
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"]
            return self.make(options[0], name, seed) if options else None
        kind = schema.get("type")
        if kind == "object":
            props = schema.get("properties", {})
            return {
                key: self.make(sub, key, seed + i) for i, (key, sub) in enumerate(props.items())
            }
        if kind == "array":
            count = min(max(int(schema.get("minItems", 0)), 3), int(schema.get("maxItems", 3)))
            item = schema.get("items", {"type": "string"})
            return [self.make(item, name, seed + 7 * (i + 1)) for i in range(count)]
        if kind in ("integer", "number"):
            low = int(schema.get("minimum", 0))
            high = int(schema.get("maximum", max(low, 100)))
            return low + seed % (high - low + 1)
        if kind == "boolean":
            return seed % 2 == 0
        return self._text(name, seed, int(schema.get("maxLength", 10_000)))

    def _text(self, name: str, seed: int, limit: int) -> str:
        n = seed % 97
        if "hashtag" in name:
            text = f"#offlinedraft{n}"
        elif "url" in name:
            text = f"https://example.invalid/offline/{n}"
        elif name == "body":
            text = (
                f"{MARK} A placeholder about {self.subject}. It was written without a model,"
                " so it only shows the shape of a real draft. Replace it before publishing."
            )
        else:
            text = f"{MARK} {name.replace('_', ' ')} for {self.subject} ({n})"
        return text[:limit]


class OfflineImages:
    name = "offline"
    local = True

    async def generate(self, request: ImageRequest) -> ImageResult:
        return await self.send(request)

    async def send(self, request: ImageRequest) -> ImageResult:
        size = request.size if request.size and request.size != "auto" else ""
        size = size or image_family(request.model).smallest_size
        width, height = (int(v) for v in size.split("x"))
        data = await asyncio.to_thread(placeholder_png, request.prompt, width, height)
        return ImageResult(data, "image/png", self.name, MODEL, size, request.quality, None)


def placeholder_png(prompt: str, width: int, height: int) -> bytes:
    """A solid PNG whose colour comes from the prompt, with OFFLINE written on it."""
    from PIL import Image, ImageDraw

    seed = _seed(prompt)
    colour = (64 + seed % 128, 64 + (seed >> 8) % 128, 64 + (seed >> 16) % 128)
    image = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(image).text((16, 16), "OFFLINE PLACEHOLDER", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
