"""``GET /media/{token}``: a file of the local media store, for a signed link that has
not expired (:mod:`alchemy.storage.tokens`).

The token is the authorization (a browser following a link sends no bearer token), so the
route is open; everything else is refused before any file is touched:

- no ``[media] url_secret`` here: 404;
- a token that is malformed, forged or expired: 403 (the reason is logged, not told);
- a key that is not a store key, a file that is not a regular file inside the store
  (a symlink out of it, say), or no file: 404.

There is no listing and no path from the request: the file is the one the signed key
names. Objects of the S3 store are never served here; their URLs are presigned GETs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from alchemy.config import Config
from alchemy.http.deps import Access, ApiError, Routes
from alchemy.storage import mime_type_of
from alchemy.storage.local import LocalStore
from alchemy.storage.tokens import BadTokenError, LinkSigner

log = structlog.get_logger("alchemy.http")

MEDIA_ROUTES: Final = Routes()


@dataclass(frozen=True, slots=True)
class MediaFiles:
    """What the route serves from: the local store and the checker of its links."""

    local: LocalStore
    signer: LinkSigner | None

    @classmethod
    def of(cls, config: Config) -> MediaFiles:
        secret = config.media.url_secret.reveal()
        signer = LinkSigner(secret, base_url="") if secret else None
        return cls(LocalStore(Path(config.media.directory)), signer)


MEDIA_FILES: Final = web.AppKey("media_files", MediaFiles)


@MEDIA_ROUTES.get("/media/{token}", Access.OPEN, gated=False)
async def media_file(request: web.Request) -> web.StreamResponse:
    files = request.app[MEDIA_FILES]
    if files.signer is None:
        raise ApiError(404, "media links are not enabled here ([media] url_secret)")
    try:
        link = files.signer.check(request.match_info["token"])
    except BadTokenError as exc:
        log.info("media_link_refused", reason=str(exc), peer=request.remote)
        raise ApiError(403, "invalid or expired media link") from None
    if link.store != files.local.name:
        raise ApiError(404, "no such media here")
    root = files.local.directory.resolve()
    path = files.local.path_of(link.key).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        log.info("media_link_missing", key=link.key)
        raise ApiError(404, "no such media here")
    remaining = max(0, int(link.expires - time.time()))
    headers = {
        "Content-Type": mime_type_of(link.key),
        "Cache-Control": f"private, max-age={remaining}",
        "Content-Disposition": "inline",
        # Pages of other origins may show the image (<img>); they cannot read anything else.
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    return web.FileResponse(path, headers=headers)
