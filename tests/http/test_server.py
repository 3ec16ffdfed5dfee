"""The listener of a running worker, over a real TCP socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from alchemy.config import Config, parse_config
from alchemy.errors import AlchemyError
from alchemy.http.server import HttpServer
from alchemy.ops.events import EventHooks
from alchemy.ops.wiring import operations
from alchemy.queue.keys import QueueKeys
from tests.conftest import build_config_dict, queue_table, wait_for

TOKEN = "s3cret-token-0123456789"


def config_with(prefix: str, queues: dict[str, Any], **sections: Any) -> Config:
    sections.setdefault("http", {"admin_token": TOKEN})
    sections.setdefault("events", {"enabled": True})
    sections.setdefault("records", {"enabled": True})
    return parse_config(build_config_dict(prefix, queues, **sections))


def start(run_worker: Any, config: Config) -> tuple[Any, HttpServer]:
    ops = operations(config, event_hooks=EventHooks(), install_metrics=False)
    server = HttpServer(config, metrics=ops.metrics, port=0)
    extensions = [*ops.extensions, server]
    supervisor = run_worker(config, observers=ops.observers, extensions=extensions)
    return supervisor, server


async def listening(server: HttpServer) -> str:
    await wait_for(lambda: server.runner is not None)
    return f"http://127.0.0.1:{server.port}"


def sample(text: str, name: str, labels: Sequence[str] = ()) -> float | None:
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            key = line.rsplit(" ", 1)[0]
            if key == name or key.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_running_worker_answers_health_metrics_and_the_admin_api(
    redis: Redis, prefix: str, run_worker: Any
) -> None:
    config = config_with(prefix, queue_table("q", concurrency=4, max_attempts=1))
    keys = QueueKeys(prefix, "q")
    for n in range(20):
        await redis.lpush(keys.wait, json.dumps({"id": f"ok-{n}", "enqueued_at": 1}))
    await redis.lpush(keys.wait, json.dumps({"id": "bad", "fail_until_attempt": -1}))
    _, server = start(run_worker, config)
    base = await listening(server)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:

        async def get(path: str, **kwargs: Any) -> tuple[int, Any]:
            async with http.get(base + path, **kwargs) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()

        status, health = await get("/healthz")
        assert status == 200
        assert health["status"] == "ok"
        assert health["worker"] == config.worker.identity
        status, ready = await get("/readyz")
        assert (status, ready["ready"], ready["reasons"]) == (200, True, [])

        async def drained() -> bool:
            _, queues = await get("/api/queues")
            q = queues["queues"][0]
            return q["wait"] == 0 and q["processing"] == 0 and q["dead"] == 1

        await wait_for(drained, within=10)
        _, text = await get("/metrics")
        assert sample(text, "alchemy_jobs_completed_total", ['queue="q"']) == 20
        assert sample(text, "alchemy_jobs_started_total", ['queue="q"']) == 21
        assert sample(text, "alchemy_jobs_failed_total", ['queue="q"']) == 1
        assert sample(text, "alchemy_jobs_dead_total", ['reason="max_attempts"']) == 1
        assert sample(text, "alchemy_job_pickup_seconds_count", ['queue="q"']) == 20
        assert sample(text, "alchemy_queue_jobs", ['queue="q"', 'state="dead"']) == 1
        assert sample(text, "alchemy_redis_up") == 1
        assert sample(text, "process_resident_memory_bytes") is not None

        status, job = await get("/api/queues/q/jobs/ok-3", headers=headers)
        assert status == 200
        assert (job["state"], job["attempt"]) == ("completed", 1)
        status, dead = await get("/api/queues/q/dead", headers=headers)
        assert status == 200
        assert [e["id"] for e in dead["entries"]] == ["bad"]
        # Job data needs the token even on loopback; a rebinding page gets nothing at all.
        assert (await get("/api/queues/q/dead"))[0] == 401
        rebound = {"Host": f"attacker.example:{server.port}", **headers}
        for path in ("/healthz", "/metrics", "/api/queues", "/api/queues/q/dead"):
            assert (await get(path, headers=rebound))[0] == 421, path

        async with http.post(base + "/api/queues/q/pause") as response:
            assert response.status == 401
            assert "error" in await response.json()
        async with http.post(base + "/api/queues/q/pause", headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"queue": "q", "paused": True})
        assert await redis.exists(keys.paused)

        async def throughput() -> bool:
            _, q = await get("/api/queues/q")
            return q["throughput"]["last_5_minutes"]["completed"] == 20

        await wait_for(throughput, within=5)


async def test_readyz_names_what_is_missing(redis: Redis, prefix: str, run_worker: Any) -> None:
    config = config_with(
        prefix,
        queue_table("q"),
        database={"url": "postgresql://postgres@127.0.0.1:1/postgres"},
    )
    supervisor, server = start(run_worker, config)
    base = await listening(server)
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/readyz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["ready"] is False
        assert [r.split(":")[0] for r in body["reasons"]] == ["postgres"]
        await server.stopping()
        await asyncio.sleep(0.6)  # past the readiness cache
        async with http.get(base + "/readyz") as response:
            assert response.status == 503
            assert "stopping" in (await response.json())["reasons"][0]
        async with http.get(base + "/healthz") as response:
            assert response.status == 200
    supervisor.request_stop("test")
    assert await asyncio.wait_for(supervisor.task, 10) == 0
    assert server.runner is None


async def test_a_taken_port_stops_the_worker_with_one_line(
    redis: Redis, prefix: str, run_worker: Any
) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        config = config_with(prefix, queue_table("q"), http={"port": port})
        ops = operations(config, event_hooks=EventHooks(), install_metrics=False)
        server = HttpServer(config, metrics=ops.metrics)
        extensions = [*ops.extensions, server]
        supervisor = run_worker(config, observers=ops.observers, extensions=extensions)
        with pytest.raises(AlchemyError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(supervisor.task, 10)
    finally:
        blocker.close()
        await blocker.wait_closed()
