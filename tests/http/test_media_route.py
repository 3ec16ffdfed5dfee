"""``GET /media/{token}``: the local store's files for signed, unexpired links only, never
a path outside the store, no listing."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.config import Config, parse_config
from alchemy.http.app import create_app
from alchemy.http.deps import Access, Deps
from alchemy.http.media import MEDIA_ROUTES
from alchemy.http.overview import OverviewCache
from alchemy.storage.local import LocalStore
from alchemy.storage.tokens import LinkSigner, _b64
from tests.conftest import build_config_dict, queue_table
from tests.fakes.ai_server import png_bytes

SECRET = "the-media-url-secret-0123456789"
Client = TestClient[Any, Any]


def config_for(prefix: str, media: Path, **settings: Any) -> Config:
    raw = build_config_dict(
        prefix,
        queue_table("q"),
        media={"directory": str(media), "url_secret": SECRET, **settings},
    )
    return parse_config(raw)


@pytest.fixture
async def client_for(redis: Redis, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(config: Config) -> Client:
        overview = OverviewCache(redis, prefix, [q.name for q in config.queues], ttl=0.0)
        client: Client = TestClient(TestServer(create_app(Deps(config, redis, "t:w", overview))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def path_of(url: str) -> str:
    return url[url.index("/media/") :]


async def test_a_signed_link_serves_the_exact_file(
    client_for: Any, prefix: str, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path, LinkSigner(SECRET, "http://x"))
    data = png_bytes(30, 20)
    stored = store.put_sync(data, "image/png")
    client = await client_for(config_for(prefix, tmp_path))
    url = await store.url(stored.path, 60)
    assert url is not None
    response = await client.get(path_of(url))
    assert response.status == 200
    body = await response.read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    head = await client.head(path_of(url))
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(data)))


async def test_bad_forged_and_expired_tokens_are_refused(
    client_for: Any, prefix: str, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path)
    stored = store.put_sync(png_bytes(), "image/png")
    client = await client_for(config_for(prefix, tmp_path))
    good = LinkSigner(SECRET, "").token("local", stored.path, 60)
    payload, signature = good.split(".")
    an_hour_ago = LinkSigner(SECRET, "", clock=lambda: time.time() - 3600)
    refused = {
        "expired": an_hour_ago.token("local", stored.path, 60),
        "other secret": LinkSigner("another-secret-0123456789", "").token("local", stored.path, 60),
        "no signature": payload,
        "garbage": "not-a-token",
        "bad base64": f"{payload}.@@@@",
        "signature of another payload": f"{_b64(b'v1:local:x:9999999999')}.{signature}",
        "too long": "a" * 600 + "." + signature,
    }
    for what, token in refused.items():
        response = await client.get(f"/media/{token}")
        assert response.status == 403, what
        assert await response.json() == {"error": "invalid or expired media link"}, what
    assert (await client.get(f"/media/{good}")).status == 200


async def test_no_path_outside_the_store_is_ever_served(
    client_for: Any, prefix: str, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    secret_file = tmp_path / "outside.png"
    secret_file.write_bytes(b"not for you")
    client = await client_for(config_for(prefix, media))
    # A path in the URL instead of a token: the router or the token check refuses it.
    for path in (
        "/media/../outside.png",
        "/media/%2E%2E%2Foutside.png",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/",
        "/media",
    ):
        response = await client.get(path)
        assert response.status in (403, 404), path
        assert b"not for you" not in await response.read()
    # A genuinely signed key whose file is a symlink out of the store: not served.
    digest = hashlib.sha256(b"x").hexdigest()
    key = f"{digest[:2]}/{digest}.png"
    (media / digest[:2]).mkdir(parents=True)
    os.symlink(secret_file, media / key)
    token = LinkSigner(SECRET, "").token("local", key, 60)
    response = await client.get(f"/media/{token}")
    assert response.status == 404
    assert b"not for you" not in await response.read()
    # A signed link to an object of the S3 store is not served here either.
    s3_token = LinkSigner(SECRET, "").token("s3", key, 60)
    assert (await client.get(f"/media/{s3_token}")).status == 404


async def test_without_a_url_secret_there_are_no_media_links(
    client_for: Any, prefix: str, tmp_path: Path
) -> None:
    raw = build_config_dict(prefix, queue_table("q"), media={"directory": str(tmp_path)})
    client = await client_for(parse_config(raw))
    token = LinkSigner(SECRET, "").token("local", "ab/" + "ab" + "0" * 62 + ".png", 60)
    response = await client.get(f"/media/{token}")
    assert response.status == 404
    assert "url_secret" in (await response.json())["error"]


async def test_a_media_link_needs_the_listeners_host_but_no_admin_token(
    client_for: Any, prefix: str, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path, LinkSigner(SECRET, "http://x"))
    stored = store.put_sync(png_bytes(), "image/png")
    config = parse_config(
        build_config_dict(
            prefix,
            queue_table("q"),
            media={"directory": str(tmp_path), "url_secret": SECRET},
            http={"admin_token": "an-admin-token-0123456789"},
        )
    )
    client = await client_for(config)
    token = LinkSigner(SECRET, "").token("local", stored.path, 60)
    assert (await client.get(f"/media/{token}")).status == 200  # the link is the permission
    foreign = await client.get(f"/media/{token}", headers={"Host": "rebound.example"})
    assert foreign.status == 421


def test_the_media_route_is_open_and_holds_no_redis_slot() -> None:
    declared = {(r.method, r.path): (r.access, r.gated) for r in MEDIA_ROUTES}
    assert declared == {("GET", "/media/{token}"): (Access.OPEN, False)}
