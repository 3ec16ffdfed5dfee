"""The live feed: one reader of the events streams for every page, bounded per page, started
by the first page and stopped by the last, and still reading after Redis errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from alchemy.http.app import create_app
from alchemy.http.dashboard import LIVE
from alchemy.http.deps import Deps
from alchemy.http.live import CLIENT_QUEUE, Client, LiveFeed
from alchemy.http.overview import OverviewCache
from alchemy.queue.keys import QueueKeys
from tests.conftest import REDIS_URL, wait_for
from tests.http.test_dashboard_api import config_for


def feed_for(prefix: str, connect: Callable[[], Redis] | None = None) -> LiveFeed:
    renders: list[float] = []

    async def render(since: float) -> dict[str, Any]:
        renders.append(since)
        return {"renders": len(renders)}

    return LiveFeed(
        prefix=prefix,
        queues=["q", "other"],
        connect=connect or (lambda: Redis.from_url(REDIS_URL)),
        render=render,
        coalesce=0.05,
        push_every=0.3,
    )


async def next_message(client: Client, within: float = 3.0) -> tuple[str, dict[str, Any]]:
    raw = await asyncio.wait_for(client.queue.get(), within)
    assert raw is not None
    head, _, data = raw.decode().strip().partition("\ndata: ")
    return head.removeprefix("event: "), json.loads(data)


async def until_change(client: Client, queue: str, total: int = 1) -> dict[str, int]:
    """The changes of ``queue`` summed over messages until they count ``total`` events."""
    seen: dict[str, int] = {}
    for _ in range(30):
        _event, body = await next_message(client)
        for name, count in body.get("changes", {}).get(queue, {}).items():
            seen[name] = seen.get(name, 0) + count
        if sum(seen.values()) >= total:
            return seen
    raise AssertionError(f"only {seen} of {queue} arrived")


async def test_the_first_page_starts_it_and_changes_reach_every_page(
    redis: Redis, prefix: str
) -> None:
    feed = feed_for(prefix)
    assert not feed.running
    first, second = feed.join(), feed.join()
    assert feed.running
    await wait_for(lambda: feed.reads > 0 or feed.pushes > 0)
    await asyncio.sleep(0.2)  # the reader is blocked on XREAD from "now"
    events = QueueKeys(prefix, "q").events
    await redis.xadd(events, {"event": "completed", "job_id": "a"})
    await redis.xadd(events, {"event": "progress", "job_id": "a"})
    for client in (first, second):
        changes = await until_change(client, "q", total=2)
        assert changes == {"completed": 1, "progress": 1}
    feed.leave(first)
    assert feed.running
    feed.leave(second)
    assert not feed.running
    await feed.close()


async def test_a_page_that_does_not_keep_up_is_dropped(redis: Redis, prefix: str) -> None:
    feed = feed_for(prefix)
    slow, quick = feed.join(), feed.join()
    received = 0
    while feed.pushes <= CLIENT_QUEUE + 2:  # the slow page reads nothing meanwhile
        await next_message(quick)
        received += 1
    assert feed.dropped == 1
    assert slow not in feed.clients
    assert quick in feed.clients
    queued = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert queued == [None]  # its stream ends; what it had not read is let go
    assert received > CLIENT_QUEUE
    await feed.close()
    assert await asyncio.wait_for(quick.queue.get(), 1) is None


async def test_it_reads_on_after_redis_errors(redis: Redis, prefix: str) -> None:
    made: list[Redis] = []

    def connect() -> Redis:
        # The first two connections go nowhere (Redis away), the next ones to Redis.
        url = "redis://127.0.0.1:1/0" if len(made) < 2 else REDIS_URL
        made.append(Redis.from_url(url, socket_connect_timeout=0.5))
        return made[-1]

    feed = feed_for(prefix, connect)
    client = feed.join()
    await wait_for(lambda: len(made) >= 3 and feed.reads >= 1, within=10)
    await redis.xadd(QueueKeys(prefix, "other").events, {"event": "dead"})
    assert await until_change(client, "other") == {"dead": 1}
    await feed.close()
    assert not feed.running


async def test_pages_follow_the_stream_over_http_until_the_listener_closes(
    redis: Redis, prefix: str
) -> None:
    config = config_for(prefix)
    overview = OverviewCache(redis, prefix, [q.name for q in config.queues], ttl=0.0)
    app = create_app(Deps(config, redis, "t:w", overview))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.get("/api/live")
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"retry: 2000\n\n"
        message = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        event, _, data = message.decode().strip().partition("\ndata: ")
        assert event == "event: overview"
        body = json.loads(data)
        assert [q["queue"] for q in body["queues"]] == ["q", "other"]
        assert body["changes"] == {}
        assert app[LIVE].running
    finally:
        await client.close()  # the app's shutdown ends every page's stream
    assert not app[LIVE].running
    assert not app[LIVE].clients
