"""The dashboard's files, shipped in the package (``alchemy/http/static/``): read once,
served from memory with a strong ETag and ``Cache-Control: no-cache``.

No-cache with ETags rather than content-hashed names: there is no build step to rename
files, the three files are small (a revalidation is one 304 per file when the page is
opened, and a page stays open for hours on its live feed), and a browser can never run an
old script against a newer listener after an upgrade.

Every response of the listener carries the headers of :data:`SECURITY_HEADERS` (set by the
app): a strict Content-Security-Policy (scripts and styles only from this origin, no inline
script, no framing), no MIME sniffing, no referrer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str

    def response(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        given = request.headers.get("If-None-Match", "")
        if self.etag in (tag.strip() for tag in given.split(",")):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = self.content_type
        return web.Response(body=self.body, headers=headers)


def load_static() -> dict[str, StaticFile]:
    """Every file of ``alchemy/http/static/`` by name."""
    files: dict[str, StaticFile] = {}
    folder = resources.files("alchemy.http").joinpath("static")
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    return files
