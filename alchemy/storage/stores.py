"""The media stores of one process: where new media goes (``[media] store``) and the local
directory, which keeps serving the rows written there before a move to S3.

:func:`open_stores` opens them (the S3 client, when configured), removes the partial files
of writes that died, and probes S3's credentials: a process with a wrong secret stops at
startup with a :class:`~alchemy.errors.ConfigError` instead of failing every media job.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from alchemy.config import Config, HttpConfig, MediaConfig
from alchemy.storage import MediaStore, Stored, StoreError
from alchemy.storage.local import LocalStore
from alchemy.storage.s3 import S3Store  # aiobotocore is imported only when it opens
from alchemy.storage.tokens import LinkSigner


class MediaStores:
    """``primary`` takes new media; :meth:`named` finds the store a row names."""

    def __init__(self, config: Config, local: LocalStore, s3: S3Store | None) -> None:
        self.config = config
        self.local = local
        self.s3 = s3
        self.primary: MediaStore = s3 if config.media.store == "s3" and s3 else local

    def named(self, name: str | None) -> MediaStore:
        """The store called ``name`` (a row without one was written locally)."""
        if name in (None, "local"):
            return self.local
        if name == "s3" and self.s3 is not None:
            return self.s3
        raise StoreError(f"media store {name!r} is not configured in this process ([media])")

    async def put(self, data: bytes, mime_type: str) -> Stored:
        return await self.primary.put(data, mime_type)

    async def get(self, store: str | None, key: str) -> bytes:
        return await self.named(store).get(key)

    async def url(self, store: str | None, key: str, lifetime: float | None = None) -> str | None:
        """A fresh URL for the object, valid ``lifetime`` seconds (``[media]
        url_lifetime`` by default); None when its store has no URLs here (a local store
        without ``url_secret`` or a listener)."""
        seconds = self.config.media.url_lifetime if lifetime is None else lifetime
        return await self.named(store).url(key, seconds)


def uses_s3(media: MediaConfig) -> bool:
    """S3 is opened when it takes new media, and also, with its settings complete, when it
    does not (``store`` back to ``local``): its rows are still read and linked."""
    complete = media.s3_bucket and media.s3_access_key_id and media.s3_secret_access_key
    return media.store == "s3" or bool(complete)


def links_base_url(config: Config) -> str:
    """Where browsers reach this host's listener: ``[media] public_url``, else the
    listener's own address (``""`` when there is no listener)."""
    if config.media.public_url:
        return config.media.public_url
    http: HttpConfig = config.http
    if not http.port:
        return ""
    host = http.host
    if host in ("0.0.0.0", "::"):  # every address: the one this host is known by
        host = config.worker.host or socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}{http.path_prefix}"


def link_signer(config: Config) -> LinkSigner | None:
    """The signer of local media links, when a secret and a base URL are configured."""
    secret = config.media.url_secret.reveal()
    base = links_base_url(config)
    return LinkSigner(secret, base) if secret and base else None


@contextlib.asynccontextmanager
async def open_stores(
    config: Config, *, probe: bool = True, sweep: bool = True
) -> AsyncIterator[MediaStores]:
    """The process's stores, S3's client closed on the way out. ``probe``: S3's
    credentials checked (ConfigError when refused); ``sweep``: the partial files of local
    writes that died removed (a worker's start)."""
    local = LocalStore(Path(config.media.directory), link_signer(config))
    async with contextlib.AsyncExitStack() as stack:
        s3: S3Store | None = None
        if uses_s3(config.media):
            opened = await stack.enter_async_context(S3Store(config.media))
            if probe:
                await opened.probe()
            s3 = opened
        if sweep:
            await local.sweep()
        yield MediaStores(config, local, s3)
