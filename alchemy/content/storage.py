"""The local media store: files named by their sha256, written atomically.

A file is written to a temporary name in the same directory, flushed to disk, then renamed
into place and the directory synced, so a reader (or a crash) never sees half a file.
The same bytes always land at the same path (``ab/abcdef....png``), so storing them twice
is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

EXTENSIONS: Final = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}


@dataclass(frozen=True, slots=True)
class Stored:
    path: str  # relative to the media directory
    sha256: str
    bytes: int


def relative_path(sha256: str, mime_type: str) -> str:
    return f"{sha256[:2]}/{sha256}{EXTENSIONS.get(mime_type, '.bin')}"


def store_bytes_sync(directory: Path, data: bytes, mime_type: str) -> Stored:
    digest = hashlib.sha256(data).hexdigest()
    relative = relative_path(digest, mime_type)
    final = directory / relative
    if final.exists() and final.stat().st_size == len(data):
        return Stored(relative, digest, len(data))
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=final.parent, prefix=".incoming-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(final.parent)
    return Stored(relative, digest, len(data))


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def store_bytes(directory: Path, data: bytes, mime_type: str) -> Stored:
    return await asyncio.to_thread(store_bytes_sync, directory, data, mime_type)


def downscale_sync(data: bytes, longest_edge: int) -> tuple[bytes, int, int]:
    """A PNG copy no larger than ``longest_edge`` on its longest side, and its size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((longest_edge, longest_edge))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue(), image.width, image.height


def dimensions_sync(data: bytes) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except (UnidentifiedImageError, OSError):
        return None
