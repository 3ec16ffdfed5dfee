"""The admin API through aiohttp's test client, against the real Redis."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.config import Config, parse_config
from alchemy.errors import ConfigError
from alchemy.http.app import create_app
from alchemy.http.deps import Deps
from alchemy.http.overview import OverviewCache
from alchemy.ops.metrics import Metrics
from alchemy.ops.records import JobRecords
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import build_config_dict, queue_table

TOKEN = "0123456789abcdef-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]


def make_config(prefix: str, **http: Any) -> Config:
    raw = build_config_dict(prefix, {**queue_table("q"), **queue_table("other")})
    raw["http"] = {"admin_token": TOKEN, **http}
    raw["events"] = {"enabled": True}
    raw["records"] = {"enabled": True}
    return parse_config(raw)


@pytest.fixture
async def client_for(redis: Redis, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(config: Config | None = None, **deps: Any) -> Client:
        config = config or make_config(prefix)
        overview = OverviewCache(redis, prefix, [q.name for q in config.queues], ttl=0.0)
        app = create_app(Deps(config, deps.pop("redis", redis), "test:w", overview, **deps))
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def add_dead(redis: Redis, prefix: str, job_id: str | None, n: int = 0) -> None:
    job = json.dumps({"id": job_id, "n": n} if job_id else {"n": n}).encode()
    entry = encode_dead_entry(
        queue="q",
        raw_job=job,
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo("ValueError", "told to fail"),
        meta=Meta(id=job_id or "", attempt=3),
        dead_at_ms=1,
    )
    await redis.lpush(QueueKeys(prefix, "q").dead, entry)


async def test_queues_list_depths(client_for: Any, redis: Redis, prefix: str) -> None:
    client = await client_for()
    await redis.lpush(QueueKeys(prefix, "q").wait, b"{}", b"{}")
    await add_dead(redis, prefix, "x")
    response = await client.get("/api/queues")
    assert response.status == 200
    body = await response.json()
    queues = {q["queue"]: q for q in body["queues"]}
    assert set(queues) == {"q", "other"}
    assert (queues["q"]["wait"], queues["q"]["dead"], queues["q"]["paused"]) == (2, 1, False)
    assert queues["q"]["throughput"]["last_minute"] == {
        "completed": 0,
        "failed": 0,
        "completed_per_s": 0.0,
    }
    one = await client.get("/api/queues/q")
    assert (await one.json())["wait"] == 2
    missing = await client.get("/api/queues/nope")
    assert (missing.status, await missing.json()) == (404, {"error": "no queue named 'nope'"})


async def test_dead_list_pages_and_checks_its_parameters(
    client_for: Any, redis: Redis, prefix: str
) -> None:
    client = await client_for()
    for n in range(5):
        await add_dead(redis, prefix, f"j{n}", n)
    page = await (await client.get("/api/queues/q/dead?offset=1&limit=2", headers=AUTH)).json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 2)
    assert [e["id"] for e in page["entries"]] == ["j3", "j2"]  # newest first
    entry = page["entries"][0]
    assert entry["reason"] == "max_attempts"
    assert entry["error"] == {"type": "ValueError", "message": "told to fail"}
    assert json.loads(entry["job"]) == {"id": "j3", "n": 3}
    for query in ("limit=0", "limit=501", "offset=-1", "limit=ten"):
        response = await client.get(f"/api/queues/q/dead?{query}", headers=AUTH)
        assert response.status == 400, query
        assert "error" in await response.json()


async def test_dead_entries_not_utf8_or_truncated(
    client_for: Any, redis: Redis, prefix: str
) -> None:
    client = await client_for()
    keys = QueueKeys(prefix, "q")
    # A poison entry as the recovery script writes it for a job that is not UTF-8.
    poison = b'{"v":1,"queue":"q","id":"p1","reason":"poison","job":"{\\"b\\":\\"\xff\\"}"}'
    big = b'{"id":"big","pad":"' + b"x" * 100_000 + b'"}'
    truncated = encode_dead_entry(
        queue="q",
        raw_job=big,
        reason=DeadReason.TOO_LARGE,
        error=ErrorInfo("BadJob", "too big"),
        meta=Meta(id="big"),
        dead_at_ms=1,
    )
    await redis.lpush(keys.dead, poison, truncated)
    response = await client.get("/api/queues/q/dead", headers=AUTH)
    assert response.status == 200
    first, second = (await response.json())["entries"]
    assert (first["id"], first["truncated"], first["job_bytes"]) == ("big", True, len(big))
    assert first["job_sha256"] == hashlib.sha256(big).hexdigest()
    assert second["job_b64"] == base64.b64encode(b'{"b":"\xff"}').decode()
    url = "/api/queues/q/dead/retry"
    response = await client.post(url, json={"id": "big"}, headers=AUTH)
    assert response.status == 409
    assert "keeps only the first 65536 bytes" in (await response.json())["error"]
    response = await client.post(url, json={"all": True}, headers=AUTH)
    body = await response.json()
    assert body == {"queue": "q", "retried": 1, "skipped_truncated": 1}
    assert await redis.lrange(keys.wait, 0, -1) == [b'{"b":"\xff"}']


async def test_changes_need_the_token(client_for: Any, redis: Redis, prefix: str) -> None:
    client = await client_for()
    paths = ["pause", "resume", "dead/retry", "dead/purge"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            response = await client.post(
                f"/api/queues/q/{path}", json={"all": True}, headers=headers
            )
            assert response.status == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"] == "missing or wrong bearer token"
    assert not await redis.exists(QueueKeys(prefix, "q").paused)
    # Reads on a loopback listener need no token.
    assert (await client.get("/api/queues")).status == 200


async def test_without_a_token_no_change_is_possible(client_for: Any, prefix: str) -> None:
    client = await client_for(make_config(prefix, admin_token=""))
    response = await client.post("/api/queues/q/pause", headers=AUTH)
    assert response.status == 401
    assert "no admin token is configured" in (await response.json())["error"]


async def test_pause_resume(client_for: Any, redis: Redis, prefix: str) -> None:
    client = await client_for()
    keys = QueueKeys(prefix, "q")
    response = await client.post("/api/queues/q/pause", headers=AUTH)
    assert (response.status, await response.json()) == (200, {"queue": "q", "paused": True})
    assert await redis.get(keys.paused) == b"1"
    assert (await (await client.get("/api/queues/q")).json())["paused"] is True
    response = await client.post("/api/queues/q/resume", headers=AUTH)
    assert (await response.json())["paused"] is False
    assert not await redis.exists(keys.paused)
    assert (await client.post("/api/queues/nope/pause", headers=AUTH)).status == 404


async def test_retry_and_purge_dead_jobs(client_for: Any, redis: Redis, prefix: str) -> None:
    client = await client_for()
    keys = QueueKeys(prefix, "q")
    for job_id in ("a", "b", "c", None):
        await add_dead(redis, prefix, job_id)
    url = "/api/queues/q/dead"
    response = await client.post(f"{url}/retry", json={"id": "b"}, headers=AUTH)
    body = await response.json()
    assert (response.status, body) == (200, {"queue": "q", "retried": 1, "skipped_truncated": 0})
    assert json.loads(await redis.lindex(keys.wait, 0)) == {"id": "b", "n": 0}
    response = await client.post(f"{url}/retry", json={"id": "b"}, headers=AUTH)
    assert response.status == 404
    assert "no dead job with id 'b'" in (await response.json())["error"]
    response = await client.post(f"{url}/purge", json={"id": "a"}, headers=AUTH)
    assert (await response.json())["purged"] == 1
    assert (await client.post(f"{url}/purge", json={"id": "a"}, headers=AUTH)).status == 404
    response = await client.post(f"{url}/retry", json={"all": True}, headers=AUTH)
    assert (await response.json())["retried"] == 2
    await add_dead(redis, prefix, "d")
    response = await client.post(f"{url}/purge", json={"all": True}, headers=AUTH)
    assert (await response.json())["purged"] == 1
    assert await redis.llen(keys.dead) == 0
    bad_bodies: list[Any] = [
        None,
        {},
        {"id": "a", "all": True},
        {"all": False},
        {"all": "yes"},
        {"id": ""},
        {"id": 7},
        {"id": "x" * 257},
        ["a"],
    ]
    for body in bad_bodies:
        response = await client.post(f"{url}/retry", json=body, headers=AUTH)
        assert response.status == 400, body
    response = await client.post(f"{url}/purge", data=b"{nope", headers=AUTH)
    assert (response.status, await response.json()) == (400, {"error": "the body must be JSON"})


async def test_job_lookup(client_for: Any, redis: Redis, prefix: str) -> None:
    client = await client_for()
    records = JobRecords(prefix)
    records.attach(redis)
    records.on_job(JobEvent("q", Transition.STARTED, "a/b", 1, "w"))
    records.on_job(JobEvent("q", Transition.COMPLETED, "a/b", 1, "w", duration_s=0.5))
    await records.flush()
    response = await client.get("/api/queues/q/jobs/a/b", headers=AUTH)
    assert response.status == 200
    record = await response.json()
    assert (record["id"], record["state"], record["attempt"], record["worker"]) == (
        "a/b",
        "completed",
        1,
        "w",
    )
    assert record["duration_ms"] == 500.0
    response = await client.get("/api/queues/q/jobs/unknown", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["state"] == "unknown"
    assert (await client.get("/api/queues/other/jobs/a/b", headers=AUTH)).status == 404
    assert (await client.get("/api/queues/q/jobs/" + "x" * 300, headers=AUTH)).status == 400
    off = await client_for(_records_off(prefix))  # no token: loopback serves it without
    response = await off.get("/api/queues/q/jobs/a/b")
    assert response.status == 404
    assert "records are off" in (await response.json())["error"]


def _records_off(prefix: str) -> Config:
    raw = build_config_dict(prefix, queue_table("q"))
    raw["records"] = {"enabled": False}
    return parse_config(raw)


async def test_health_readiness_and_metrics(client_for: Any) -> None:
    reasons: list[str] = []

    async def readiness() -> list[str]:
        return list(reasons)

    metrics = Metrics()
    client = await client_for(readiness=readiness, metrics=metrics)
    health = await client.get("/healthz")
    assert (await health.json())["status"] == "ok"
    assert (await client.get("/readyz")).status == 200
    reasons.append("redis: down")
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "ready": False,
        "worker": "test:w",
        "reasons": ["redis: down"],
        "providers": {"text": "offline", "image": "offline", "offline": ["text", "image"]},
    }
    metrics.on_job(JobEvent("q", Transition.STARTED, "a", 1, "w"))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert 'alchemy_jobs_started_total{queue="q"} 1.0' in await response.text()
    no_metrics = await client_for()
    assert (await no_metrics.get("/metrics")).status == 404


async def test_errors_are_json_without_tracebacks(client_for: Any) -> None:
    async def broken() -> list[str]:
        raise RuntimeError("secret internals")

    client = await client_for(readiness=broken)
    response = await client.get("/readyz")
    assert response.status == 500
    assert await response.json() == {"error": "internal error"}
    response = await client.get("/nowhere")
    assert (response.status, await response.json()) == (404, {"error": "Not Found"})
    response = await client.delete("/api/queues/q/pause", headers=AUTH)
    assert response.status == 405
    assert "error" in await response.json()


async def test_redis_away_is_503(client_for: Any) -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        client = await client_for(redis=down)
        response = await client.post("/api/queues/q/pause", headers=AUTH)
        assert response.status == 503
        assert (await response.json())["error"].startswith("redis unavailable")
    finally:
        await down.aclose()


async def test_beyond_loopback_a_token_is_required_for_everything_under_api(
    client_for: Any, prefix: str
) -> None:
    client = await client_for(make_config(prefix, host="0.0.0.0"))
    assert (await client.get("/api/queues")).status == 401
    assert (await client.get("/api/queues", headers=AUTH)).status == 200
    assert (await client.get("/healthz")).status == 200  # probes and scrapes stay open


def test_no_listener_beyond_loopback_without_a_token(redis: Redis, prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"http\.admin_token: must be set"):
        make_config(prefix, host="0.0.0.0", port=9464, admin_token="")
    with pytest.raises(ConfigError, match=r"http\.admin_token: must have at least 16"):
        make_config(prefix, admin_token="short")
    assert make_config(prefix, host="::1", port=9464, admin_token="").http.port == 9464
    assert make_config(prefix, host="localhost", port=9464, admin_token="").http.port == 9464
    # create_app refuses too, whatever built the config.
    config = make_config(prefix, host="10.0.0.5", admin_token="")
    overview = OverviewCache(redis, prefix, ["q"])
    with pytest.raises(ConfigError, match="is not a loopback address"):
        create_app(Deps(config, redis, "w", overview))
