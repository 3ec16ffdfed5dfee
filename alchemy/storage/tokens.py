"""Signed, expiring links to local media, served by the HTTP listener's ``/media/{token}``.

A token is ``<payload>.<signature>``, both base64url without padding::

    payload    = "v1:<store>:<key>:<expires, unix seconds>"
    signature  = HMAC-SHA256([media] url_secret, payload)

The route serves a file only for a token whose signature matches (compared in constant
time), that has not expired, and whose key is a store key (``ab/ab12….png``): the path is
never taken from the request. Anyone holding the secret can mint links, so every host
serving the same media shares it; changing it invalidates every link given out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from alchemy.storage import KEY_PATTERN, STORE_NAMES

VERSION: Final = "v1"
ROUTE: Final = "/media/"


class BadTokenError(Exception):
    """A token that is malformed, forged or expired (the reason is for the log only)."""


@dataclass(frozen=True, slots=True)
class Link:
    store: str
    key: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Mints and checks tokens with ``secret``; ``base_url`` is where the listener is
    reached (``https://media.example.com`` or ``http://10.0.0.5:8080/alchemy``)."""

    def __init__(self, secret: str, base_url: str, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode("utf-8")
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def token(self, store: str, key: str, lifetime: float) -> str:
        expires = int(self._clock() + lifetime)
        payload = f"{VERSION}:{store}:{key}:{expires}".encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def url(self, store: str, key: str, lifetime: float) -> str:
        return f"{self.base_url}{ROUTE}{self.token(store, key, lifetime)}"

    def check(self, token: str) -> Link:
        """The link ``token`` stands for; :class:`BadTokenError` unless it is genuine and
        still valid."""
        encoded, dot, signature = token.partition(".")
        if not dot or len(token) > 512:
            raise BadTokenError("malformed")
        try:
            payload, given = _unb64(encoded), _unb64(signature)
        except (binascii.Error, ValueError):
            raise BadTokenError("not base64url") from None
        if not hmac.compare_digest(self._sign(payload), given):
            raise BadTokenError("bad signature")
        parts = payload.decode("utf-8", "replace").split(":")
        if len(parts) != 4:
            raise BadTokenError("unknown payload")
        version, store, key, expires = parts
        if version != VERSION or store not in STORE_NAMES or not KEY_PATTERN.fullmatch(key):
            raise BadTokenError("unknown payload")
        if not expires.isdigit() or int(expires) < self._clock():
            raise BadTokenError("expired")
        return Link(store, key, int(expires))
