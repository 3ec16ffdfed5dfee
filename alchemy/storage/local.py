"""The local media store: files named by their sha256 under ``[media] directory``, written
atomically.

A file is written to a temporary name in its final folder (``.incoming-*.part``), locked
with ``flock`` while it is written, flushed to disk, renamed into place and the folder
synced, so a reader never sees half a file and the same bytes always land at the same
path (``ab/ab12….png``). A process killed while writing leaves only a temporary file that
no one holds locked any more: :meth:`LocalStore.sweep` (run when a process starts)
removes such files and leaves alone the ones another live process is still writing.

Its URLs are the HTTP listener's ``/media/{token}`` route (:mod:`alchemy.storage.tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Final

import structlog

from alchemy.storage import (
    ObjectMissingError,
    Stored,
    StoreError,
    check_key,
    key_for,
)
from alchemy.storage.tokens import LinkSigner

log = structlog.get_logger("alchemy.storage")

TEMP_PREFIX: Final = ".incoming-"
TEMP_SUFFIX: Final = ".part"


class LocalStore:
    """A media directory on this host. ``links`` signs its URLs (None: it has none)."""

    name = "local"

    def __init__(self, directory: Path, links: LinkSigner | None = None) -> None:
        self.directory = directory
        self.links = links

    def path_of(self, key: str) -> Path:
        """The file of ``key``, which must be a store key (never a path from a request)."""
        return self.directory / check_key(key)

    async def put(self, data: bytes, mime_type: str) -> Stored:
        try:
            return await asyncio.to_thread(self.put_sync, data, mime_type)
        except OSError as exc:
            raise StoreError(f"local media store: cannot write: {exc}") from exc

    def put_sync(self, data: bytes, mime_type: str) -> Stored:
        key, digest = key_for(data, mime_type)
        final = self.directory / key
        if final.exists() and final.stat().st_size == len(data):
            return Stored(self.name, key, digest, len(data))
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until closed: "being written"
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
        return Stored(self.name, key, digest, len(data))

    async def get(self, key: str) -> bytes:
        path = self.path_of(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ObjectMissingError(f"local media store: no file {key}") from None
        except OSError as exc:
            raise StoreError(f"local media store: cannot read {key}: {exc}") from exc

    async def url(self, key: str, lifetime: float) -> str | None:
        if self.links is None:
            return None
        return self.links.url(self.name, check_key(key), lifetime)

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            await asyncio.to_thread(path.unlink, True)
        except OSError as exc:
            raise StoreError(f"local media store: cannot delete {key}: {exc}") from exc

    async def sweep(self) -> int:
        """Remove the temporary files of writes that died; how many were removed."""
        return await asyncio.to_thread(self.sweep_sync)

    def sweep_sync(self) -> int:
        if not self.directory.is_dir():
            return 0
        removed = 0
        for folder in self.directory.iterdir():
            if not folder.is_dir() or folder.is_symlink() or len(folder.name) != 2:
                continue
            for path in folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
                if _remove_if_abandoned(path):
                    removed += 1
        if removed:
            log.warning("media_partial_files_removed", files=removed, directory=str(self.directory))
        return removed


def _remove_if_abandoned(path: Path) -> bool:
    """Unlink ``path`` if no process holds its lock (its writer died)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
