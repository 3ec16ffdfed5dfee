"""Where media bytes live: one small interface, two backends.

    MediaStore (protocol)       put, get, url, delete; objects named by content
    ├── LocalStore              a directory on this host (the default): atomic writes,
    │                           URLs served by the HTTP listener with a signed token
    └── S3Store                 an S3-compatible bucket through aiobotocore: presigned GETs

:class:`~alchemy.storage.stores.MediaStores` holds the configured store (where new media
goes) and the local directory (where rows written before a move to S3 still are); a media
row names its store (``media.store``), so every row is read from where it was written.

Errors::

    AlchemyError
    └── StoreError              a store could not do what was asked (I/O, the S3 server)
        └── ObjectMissingError  no object under that key
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, Protocol

from alchemy.errors import AlchemyError

STORE_NAMES: Final = ("local", "s3")
EXTENSIONS: Final = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}
MIME_TYPES: Final = {ext: mime for mime, ext in EXTENSIONS.items()} | {
    ".bin": "application/octet-stream"
}
# The only keys a store ever writes or reads: ab/ab<62 more hex>.ext
KEY_PATTERN: Final = re.compile(r"^([0-9a-f]{2})/\1[0-9a-f]{62}\.(png|jpg|webp|gif|bin)$")


class StoreError(AlchemyError):
    """A store could not put, get or delete an object (disk, network, the S3 server)."""


class ObjectMissingError(StoreError):
    """No object under the key asked for."""


@dataclass(frozen=True, slots=True)
class Stored:
    """An object in a store: its key (``ab/ab12….png``), its sha256 and its size."""

    store: str
    path: str
    sha256: str
    bytes: int


def object_key(sha256: str, mime_type: str) -> str:
    """The key of bytes with this sha256: ``ab/ab12….png`` (``.bin`` for unknown types)."""
    return f"{sha256[:2]}/{sha256}{EXTENSIONS.get(mime_type, '.bin')}"


def key_for(data: bytes, mime_type: str) -> tuple[str, str]:
    """(key, sha256) of ``data``."""
    digest = hashlib.sha256(data).hexdigest()
    return object_key(digest, mime_type), digest


def mime_type_of(key: str) -> str:
    return MIME_TYPES.get(key[key.rfind(".") :], "application/octet-stream")


def check_key(key: str) -> str:
    """``key`` if it is a key a store writes (never a path from elsewhere)."""
    if not KEY_PATTERN.fullmatch(key):
        raise ObjectMissingError(f"not a media key: {key[:80]!r}")
    return key


class MediaStore(Protocol):
    """One store. Keys come from :func:`object_key`; the same bytes always get the same
    key, so a put that is retried writes the same object again."""

    name: str

    async def put(self, data: bytes, mime_type: str) -> Stored:
        """Store ``data`` (whole, or not at all) and return where."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectMissingError` when there are none."""
        ...

    async def url(self, key: str, lifetime: float) -> str | None:
        """A URL a browser can GET for ``lifetime`` seconds (None: this store has none)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object under ``key`` (no error when there is none)."""
        ...
