"""The dashboard's routes through aiohttp's test client against the real Redis: its files,
headers, overview, dead-letter views, who may read them, and the path prefix."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.config import Config, parse_config
from alchemy.http.app import create_app
from alchemy.http.dashboard import DASHBOARD
from alchemy.http.deps import Access, Deps
from alchemy.http.overview import OverviewCache
from alchemy.http.static import CSP, load_static
from alchemy.ops.events import EventStream
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import build_config_dict, queue_table

TOKEN = "0123456789abcdef-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]


def config_for(prefix: str, **http: Any) -> Config:
    raw = build_config_dict(prefix, {**queue_table("q", rate_limit=50), **queue_table("other")})
    raw["http"] = {"admin_token": TOKEN, **http}
    return parse_config(raw)


@pytest.fixture
async def client_for(redis: Redis, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(config: Config | None = None) -> Client:
        config = config or config_for(prefix)
        overview = OverviewCache(redis, prefix, [q.name for q in config.queues], ttl=0.0)
        client: Client = TestClient(TestServer(create_app(Deps(config, redis, "t:w", overview))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def add_dead(redis: Redis, prefix: str, job_id: str, error: str = "ValueError") -> None:
    entry = encode_dead_entry(
        queue="q",
        raw_job=json.dumps({"id": job_id, "pad": "x" * 1000}).encode(),
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo(error, "told to fail"),
        meta=Meta(id=job_id, attempt=3),
        dead_at_ms=1,
    )
    await redis.lpush(QueueKeys(prefix, "q").dead, entry)


async def test_the_page_and_its_files_with_etags_and_the_policy(client_for: Any) -> None:
    client = await client_for()
    page = await client.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-cache"
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = await page.text()
    assert '<script src="static/app.js" defer></script>' in html
    assert "<script>" not in html
    assert " style=" not in html
    again = await client.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert (again.status, await again.read()) == (304, b"")
    script = await client.get("/static/app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "innerHTML" not in await script.text()
    for path in ("/static/../config.py", "/static/nope.js", "/static/%2e%2e%2fapp.py"):
        assert (await client.get(path)).status == 404, path
    api = await client.get("/api/queues")  # every response carries the policy
    assert api.headers["Content-Security-Policy"] == CSP


def test_the_shipped_files_are_small() -> None:
    files = load_static()
    assert {"index.html", "app.css", "app.js"} <= set(files)
    assert sum(len(f.body) for f in files.values()) < 60 * 1024


async def test_overview_counts_rates_and_processes(
    client_for: Any, redis: Redis, prefix: str
) -> None:
    client = await client_for()
    producer = Producer(redis, prefix=prefix)
    await producer.enqueue("q", {}, id="first")
    await producer.enqueue("q", {}, id="second")
    await add_dead(redis, prefix, "d-1")
    keys = QueueKeys(prefix, "q")
    beat = {"identity": "h:w", "host": "h", "pid": 42, "started_ms": int(time.time() * 1000) - 5000}
    await redis.zadd(keys.consumers, {"h:w": int(time.time() * 1000)})
    await redis.set(keys.heartbeat("h:w"), json.dumps(beat), px=5000)
    await redis.lpush(keys.processing("h:w"), b"{}")
    stream = EventStream(prefix, identity="h:w")
    stream.attach(redis)
    stream.on_job(JobEvent("q", Transition.COMPLETED, "j", 1, "h:w", 0.01))
    stream.on_job(JobEvent("q", Transition.DEAD, "k", 1, "h:w", 0.01))
    assert await stream.flush()
    body = await (await client.get("/api/dashboard")).json()
    q, other = body["queues"]
    assert (q["queue"], q["wait"], q["processing"], q["dead"]) == ("q", 2, 1, 1)
    assert q["oldest_wait_s"] is not None
    assert 0 <= q["oldest_wait_s"] < 10
    assert q["rate"] == {"limit": 50, "period_s": 60.0, "burst": 0}
    assert q["serving"] == 1
    assert (sum(q["per_minute"]["completed"]), sum(q["per_minute"]["failed"])) == (1, 1)
    assert q["per_minute"]["completed"][-1] == 1  # the current minute is the last
    assert len(q["per_minute"]["completed"]) == 60
    assert (other["serving"], other["oldest_wait_s"], other["rate"]) == (0, None, None)
    [process] = body["processes"]
    assert (process["identity"], process["host"], process["pid"]) == ("h:w", "h", 42)
    assert (process["in_flight"], process["queues"], process["alive"]) == (1, ["q"], True)
    assert 4 < process["uptime_s"] < 60
    assert body["access"] == {"token_configured": True, "job_data_needs_token": True}


async def test_dead_views_are_bounded_and_need_the_token(
    client_for: Any, redis: Redis, prefix: str
) -> None:
    client = await client_for()
    for n in range(30):
        await add_dead(redis, prefix, f"d-{n}", error="KeyError" if n % 3 else "ValueError")
    paths = (
        "/api/queues/q/dead?preview=10",
        "/api/queues/q/dead/groups",
        "/api/queues/q/dead/entry?id=d-1&offset=28&total=30",
        "/api/queues/q/dead/find?id=d-1",
    )
    for path in paths:
        assert (await client.get(path)).status == 401, path
    page = await (await client.get(paths[0] + "&limit=5", headers=AUTH)).json()
    assert [e["id"] for e in page["entries"]] == ["d-29", "d-28", "d-27", "d-26", "d-25"]
    first = page["entries"][0]
    assert (first["job"], first["job_cut"], first["job_chars"]) == ('{"id": "d-', True, 1025)
    groups = await (await client.get(paths[1], headers=AUTH)).json()
    assert (groups["looked_at"], groups["total"]) == (30, 30)
    assert groups["groups"] == [
        {"reason": "max_attempts", "error_type": "KeyError", "count": 20},
        {"reason": "max_attempts", "error_type": "ValueError", "count": 10},
    ]
    # Listed at offset 28 of 30; two more died since: it is found where it moved to.
    await add_dead(redis, prefix, "d-30")
    await add_dead(redis, prefix, "d-31")
    found = await (await client.get(paths[2], headers=AUTH)).json()
    assert (found["offset"], found["entry"]["id"]) == (30, "d-1")
    assert json.loads(found["entry"]["job"])["id"] == "d-1"  # whole up to 64 KiB
    missing = await client.get("/api/queues/q/dead/entry?id=gone&offset=0&total=32", headers=AUTH)
    assert missing.status == 404
    searched = await (await client.get(paths[3], headers=AUTH)).json()
    assert (searched["searched"], searched["found"]["offset"]) == (32, 30)
    assert searched["found"]["entry"]["id"] == "d-1"
    nothing = await (await client.get("/api/queues/q/dead/find?id=zz", headers=AUTH)).json()
    assert nothing["found"] is None


@pytest.mark.parametrize(
    "path",
    [
        "/api/queues/q/dead?preview=10001",
        "/api/queues/q/dead?preview=-1",
        "/api/queues/q/dead/entry?id=a&offset=-1&total=1",
        "/api/queues/q/dead/entry?id=a&offset=0&total=1&full=2",
        "/api/queues/q/dead/entry?offset=0&total=1",
        "/api/queues/q/dead/find?id=" + "x" * 257,
        "/api/queues/q/dead/find",
    ],
)
async def test_parameters_are_checked(client_for: Any, path: str) -> None:
    client = await client_for()
    response = await client.get(path, headers=AUTH)
    assert response.status == 400
    assert set(await response.json()) == {"error"}


async def test_every_route_under_a_path_prefix(client_for: Any, prefix: str) -> None:
    client = await client_for(config_for(prefix, path_prefix="/ops/alchemy"))
    for path in ("/", "/healthz", "/api/dashboard"):
        assert (await client.get(path)).status == 404, path
    page = await client.get("/ops/alchemy/")
    assert page.status == 200
    assert 'href="static/app.css"' in await page.text()  # relative: works under any prefix
    assert (await client.get("/ops/alchemy/static/app.js")).status == 200
    assert (await client.get("/ops/alchemy/api/dashboard")).status == 200
    assert (await client.get("/ops/alchemy/healthz")).status == 200
    bare = await client.get("/ops/alchemy", allow_redirects=False)
    assert (bare.status, bare.headers["Location"]) == (308, "/ops/alchemy/")


async def test_counts_beyond_loopback_need_the_token(client_for: Any, prefix: str) -> None:
    client = await client_for(config_for(prefix, host="0.0.0.0"))
    assert (await client.get("/")).status == 200  # the page holds no data
    assert (await client.get("/static/app.js")).status == 200
    for path in ("/api/dashboard", "/api/live"):
        assert (await client.get(path)).status == 401, path
    assert (await client.get("/api/dashboard", headers=AUTH)).status == 200


def test_every_dashboard_route_declares_its_access() -> None:
    declared = {(r.method, r.path): (r.access, r.gated) for r in DASHBOARD}
    assert declared == {
        ("GET", "/"): (Access.OPEN, True),
        ("GET", "/static/{name}"): (Access.OPEN, True),
        ("GET", "/api/dashboard"): (Access.COUNTS, True),
        ("GET", "/api/live"): (Access.COUNTS, False),  # open for hours: holds no Redis slot
        ("GET", "/api/queues/{queue}/dead/groups"): (Access.JOB_DATA, True),
        ("GET", "/api/queues/{queue}/dead/entry"): (Access.JOB_DATA, True),
        ("GET", "/api/queues/{queue}/dead/find"): (Access.JOB_DATA, True),
    }


async def test_a_foreign_host_gets_no_page_and_no_feed(client_for: Any) -> None:
    client = await client_for()
    for path in ("/", "/static/app.js", "/api/dashboard", "/api/live"):
        response = await client.get(path, headers={"Host": "rebound.example", **AUTH})
        assert response.status == 421, path
        assert response.headers["Content-Security-Policy"] == CSP
