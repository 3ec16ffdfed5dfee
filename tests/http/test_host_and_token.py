"""Who the listener answers: the Host check on every route (DNS rebinding) and the token on
the routes that return job data. A real listener (AppRunner + TCPSite on 127.0.0.1), a real
aiohttp client sending its own Host header, and raw sockets for what a client library will
not send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from structlog.testing import capture_logs

from alchemy.config import Config, HttpConfig, parse_config
from alchemy.http.app import create_app, needs_token
from alchemy.http.deps import Access, Deps
from alchemy.http.hosts import MAX_LOGGED, HostCheck, host_of
from alchemy.http.overview import OverviewCache
from alchemy.ops.metrics import Metrics
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys
from tests.conftest import build_config_dict, queue_table

TOKEN = "0123456789abcdef-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FOREIGN = ("attacker.example", "127.0.0.1.attacker.example", "localhost.attacker.example")
# Every kind of route: open, counts, job data, changes, and no route at all.
GETS = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/queues",
    "/api/queues/q",
    "/api/queues/q/dead",
    "/api/queues/q/jobs/j1",
    "/nowhere",
)
POSTS = ("/api/queues/q/pause", "/api/queues/q/dead/purge")

Answer = tuple[int, Any, dict[str, str]]
Fetch = Callable[..., Awaitable[Answer]]


def make_config(prefix: str, **http: Any) -> Config:
    raw = build_config_dict(prefix, queue_table("q"))
    raw["http"] = {"admin_token": TOKEN, **http}
    return parse_config(raw)


@pytest.fixture
async def listen(redis: Redis, prefix: str) -> AsyncIterator[Callable[[Config], Awaitable[int]]]:
    """Serve ``create_app`` for a config on 127.0.0.1 (whatever ``http.host`` says, so the
    rules for other hosts can be tried here); returns the port."""
    runners: list[web.AppRunner] = []

    async def start(config: Config) -> int:
        overview = OverviewCache(redis, prefix, ["q"], ttl=0.0)
        app = create_app(Deps(config, redis, "test:w", overview, metrics=Metrics()))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def fetch() -> AsyncIterator[Fetch]:
    async with aiohttp.ClientSession() as http:

        async def request(
            port: int, path: str, host: str | None = None, *, method: str = "GET", **kw: Any
        ) -> Answer:
            headers = dict(kw.pop("headers", {}))
            if host is not None:
                headers["Host"] = host
            url = f"http://127.0.0.1:{port}{path}"
            async with http.request(method, url, headers=headers, **kw) as response:
                body: Any = await response.text()
                if response.content_type == "application/json":
                    body = json.loads(body)
                return response.status, body, dict(response.headers)

        yield request


async def raw_status(port: int, head: bytes) -> tuple[int, Any]:
    """Send ``head`` (a request line and headers) as is; the status and the JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body) if body.startswith(b"{") else body


async def add_dead(redis: Redis, prefix: str) -> None:
    entry = encode_dead_entry(
        queue="q",
        raw_job=b'{"id": "j1", "secret": "payload"}',
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo("ValueError", "no"),
        meta=Meta(id="j1", attempt=3),
        dead_at_ms=1,
    )
    await redis.lpush(QueueKeys(prefix, "q").dead, entry)


# -- the Host check -------------------------------------------------------------------------
async def test_a_foreign_host_is_refused_on_every_route_before_anything_runs(
    listen: Any, fetch: Fetch, redis: Redis, prefix: str
) -> None:
    await add_dead(redis, prefix)
    port = await listen(make_config(prefix))
    for name in FOREIGN:
        for host in (name, f"{name}:{port}", name.upper()):
            for path in GETS:
                status, body, _ = await fetch(port, path, host, headers=AUTH)
                assert status == 421, (host, path)
                assert body == {"error": f"this listener does not answer for the host {name!r}"}
            for path in POSTS:
                status, body, _ = await fetch(
                    port, path, host, method="POST", json={"all": True}, headers=AUTH
                )
                assert status == 421, (host, path)
    keys = QueueKeys(prefix, "q")
    assert not await redis.exists(keys.paused)  # no POST ran
    assert await redis.llen(keys.dead) == 1
    for host in ("0.0.0.0", "10.0.0.5", "[::2]", "[::]", "127.0.0.1.", "localhost.localdomain"):
        status, _, _ = await fetch(port, "/healthz", host)
        assert status == (200 if host == "127.0.0.1." else 421), host


async def test_loopback_names_are_answered_with_or_without_a_port(
    listen: Any, fetch: Fetch, prefix: str
) -> None:
    port = await listen(make_config(prefix))
    for host in (
        "localhost",
        f"localhost:{port}",
        "LocalHost:1",
        "localhost.",
        "127.0.0.1",
        f"127.0.0.1:{port}",
        "127.8.9.10:80",
        "[::1]",
        f"[::1]:{port}",
        "[0:0:0:0:0:0:0:1]:1",
        "::1",
    ):
        status, body, _ = await fetch(port, "/healthz", host)
        assert (status, body["status"]) == (200, "ok"), host


async def test_no_host_several_hosts_or_a_malformed_one_is_a_bad_request(
    listen: Any, prefix: str
) -> None:
    port = await listen(make_config(prefix))
    ok = await raw_status(
        port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    )
    assert ok[0] == 200
    for head in (
        b"GET /healthz HTTP/1.0\r\n",  # HTTP/1.0 may leave Host out: refused all the same
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: \r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost:80:80\r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost:http\r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: user@localhost\r\nConnection: close\r\n",
    ):
        status, _ = await raw_status(port, head)
        assert status == 400, head


async def test_the_configured_host_and_allowed_hosts_are_answered(
    listen: Any, fetch: Fetch, prefix: str
) -> None:
    everywhere = make_config(
        prefix, host="0.0.0.0", allowed_hosts=["Proxy.Example", "10.1.2.3", "[fd00::1]", "::2"]
    )
    port = await listen(everywhere)
    for host in ("proxy.example", "PROXY.EXAMPLE:443", "10.1.2.3:9464", "[FD00::1]", "[::2]:1"):
        status, _, _ = await fetch(port, "/api/queues", host, headers=AUTH)
        assert status == 200, host
    for host in ("0.0.0.0", "other.example", "sub.proxy.example", "10.1.2.4"):
        status, _, _ = await fetch(port, "/healthz", host)
        assert status == 421, host
    named = await listen(make_config(prefix, host="web-1.internal"))
    assert (await fetch(named, "/healthz", "web-1.internal:9464"))[0] == 200
    assert (await fetch(named, "/healthz", "localhost"))[0] == 200
    assert (await fetch(named, "/healthz", "web-2.internal"))[0] == 421


async def test_refusals_are_logged_once_a_minute_per_host(
    listen: Any, fetch: Fetch, prefix: str
) -> None:
    port = await listen(make_config(prefix))
    with capture_logs() as logs:
        for _ in range(5):
            await fetch(port, "/api/queues/q/dead", "attacker.example")
            await fetch(port, "/healthz", f"other.example:{port}")
    refused = [e for e in logs if e["event"] == "http_host_refused"]
    assert [(e["host"], e["path"], e["repeats"]) for e in refused] == [
        ("attacker.example", "/api/queues/q/dead", 0),
        ("other.example", "/healthz", 0),
    ]
    assert refused[0]["peer"] == "127.0.0.1"


def test_the_log_limit_per_host_and_for_a_flood_of_names() -> None:
    now = [1000.0]
    check = HostCheck(HttpConfig(), clock=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(3):
            check.note_refused("a.example", path="/", peer=None)
        now[0] += 61
        check.note_refused("a.example", path="/", peer=None)
        for n in range(MAX_LOGGED * 3):
            check.note_refused(f"n{n}.example", path="/", peer=None)
    hosts = [(e["host"], e["repeats"]) for e in logs]
    assert hosts[:2] == [("a.example", 0), ("a.example", 2)]
    assert len(hosts) == 2 + MAX_LOGGED  # the rest of the flood shares one line a minute
    assert hosts[-1] == ("(other hosts)", 0)


def test_host_header_values() -> None:
    assert host_of("LOCALHOST:9464") == "localhost"
    assert host_of("[::1]:80") == "::1"
    assert host_of("::1") == "::1"
    assert host_of("example.com.") == "example.com"
    for bad in ("", ":80", "[::1]x", "[nope]", "a:b:c", "host:", "x" * 64, "a/b", "é.example"):
        assert host_of(bad) is None, bad
    assert host_of("host:80") == "host"


# -- the token on job data ----------------------------------------------------------------
async def test_job_data_needs_the_token_when_one_is_set_even_on_loopback(
    listen: Any, fetch: Fetch, redis: Redis, prefix: str
) -> None:
    await add_dead(redis, prefix)
    port = await listen(make_config(prefix))
    for path in ("/api/queues/q/dead", "/api/queues/q/jobs/j1"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, body, response_headers = await fetch(port, path, headers=headers)
            assert (status, body) == (401, {"error": "missing or wrong bearer token"}), path
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
    status, page, _ = await fetch(port, "/api/queues/q/dead", headers=AUTH)
    assert (status, [e["id"] for e in page["entries"]]) == (200, ["j1"])
    status, unknown, _ = await fetch(port, "/api/queues/q/jobs/j1", headers=AUTH)
    assert (status, unknown["state"]) == (404, "unknown")  # past the guard: no record
    # No payloads: readable without the token on loopback.
    for path in ("/api/queues", "/api/queues/q", "/healthz", "/readyz", "/metrics"):
        status, _, _ = await fetch(port, path)
        assert status == 200, path


async def test_without_a_token_job_data_is_served_on_loopback_only(
    listen: Any, fetch: Fetch, redis: Redis, prefix: str
) -> None:
    await add_dead(redis, prefix)
    port = await listen(make_config(prefix, admin_token=""))
    status, page, _ = await fetch(port, "/api/queues/q/dead")
    assert (status, page["total"]) == (200, 1)
    status, body, _ = await fetch(port, "/api/queues/q/pause", method="POST")
    assert status == 401
    assert "no admin token is configured" in body["error"]


@pytest.mark.parametrize(
    ("access", "token_set", "loopback_only", "needed"),
    [
        (Access.OPEN, False, False, False),
        (Access.OPEN, True, True, False),
        (Access.COUNTS, True, True, False),
        (Access.COUNTS, False, True, False),
        (Access.COUNTS, True, False, True),
        (Access.JOB_DATA, True, True, True),
        (Access.JOB_DATA, False, True, False),
        # No token beyond loopback: the config and create_app refuse it; if it ever got
        # this far, job data is still refused (401 "no admin token is configured").
        (Access.JOB_DATA, False, False, True),
        (Access.CHANGE, False, True, True),
        (Access.CHANGE, True, True, True),
    ],
)
def test_who_needs_the_token(
    access: Access, token_set: bool, loopback_only: bool, needed: bool
) -> None:
    assert needs_token(access, token_set=token_set, loopback_only=loopback_only) is needed


def test_every_route_declares_its_access() -> None:
    from alchemy.http.handlers import ROUTES

    declared = {(r.method, r.path): r.access for r in ROUTES}
    assert declared[("GET", "/api/queues/{queue}/dead")] is Access.JOB_DATA
    assert declared[("GET", "/api/queues/{queue}/jobs/{job_id:.+}")] is Access.JOB_DATA
    assert all(a is Access.CHANGE for (m, _), a in declared.items() if m != "GET")
    opened = {path for (_, path), a in declared.items() if a is Access.OPEN}
    assert opened == {"/healthz", "/readyz", "/metrics"}
