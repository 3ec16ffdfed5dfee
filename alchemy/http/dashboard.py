"""The dashboard's routes: its page and files, its overview, its live feed, and the bounded
dead-letter reads behind its views (docs/operations.md, "The dashboard").

The page itself holds no data (open); the overview and the live feed are counts (the token
beyond loopback); dead-letter entries carry payloads (the token whenever one is set). The
actions are the admin API's own POST routes, which always need the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

from aiohttp import web

from alchemy.http.board import FULL_JOB_CHARS, preview_entry, snapshot
from alchemy.http.deps import (
    DEPS,
    Access,
    ApiError,
    Routes,
    int_param,
    json_response,
    queue_param,
)
from alchemy.http.live import RETRY_MS, LiveFeed
from alchemy.http.static import StaticFile
from alchemy.queue.browse import FIND_ENTRIES, GROUP_ENTRIES, DeadGroups, QueueBrowser
from alchemy.queue.job import MAX_ID_LENGTH

DASHBOARD: Final = Routes()
STATIC: Final = web.AppKey("static", dict[str, StaticFile])
LIVE: Final = web.AppKey("live", LiveFeed)
KEEPALIVE_S: Final = 15.0  # a comment line this often keeps proxies from closing the stream
GROUPS_TTL: Final = 5.0  # seconds the groups of a queue are shared by every page
GROUPS: Final = web.AppKey("groups", dict[str, tuple[float, DeadGroups]])


def _browser(request: web.Request) -> QueueBrowser:
    deps = request.app[DEPS]
    return QueueBrowser(deps.redis, prefix=deps.config.redis.prefix)


def _job_id(request: web.Request) -> str:
    job_id = request.query.get("id", "")
    if not 0 < len(job_id) <= MAX_ID_LENGTH:
        raise ApiError(400, f"id must be a string of 1-{MAX_ID_LENGTH} characters")
    return job_id


# -- the page -----------------------------------------------------------------------------
@DASHBOARD.get("/", Access.OPEN)
async def page(request: web.Request) -> web.Response:
    return request.app[STATIC]["index.html"].response(request)


@DASHBOARD.get("/static/{name}", Access.OPEN)
async def static_file(request: web.Request) -> web.Response:
    found = request.app[STATIC].get(request.match_info["name"])
    if found is None:
        raise ApiError(404, "no such file")
    return found.response(request)


# -- the overview and its live feed -------------------------------------------------------
@DASHBOARD.get("/api/dashboard", Access.COUNTS)
async def overview(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    body = snapshot(await deps.overview.get(), deps)
    return json_response(body)


@DASHBOARD.get("/api/live", Access.COUNTS, gated=False)
async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``overview`` (the body of ``GET /api/dashboard`` plus
    ``changes``, the events per queue since the last one) whenever something changed, at
    most twice a second, and at least every 2 s; ``problem`` while Redis cannot be read."""
    feed = request.app[LIVE]
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    }
    if request.method == "HEAD":  # no stream to hold open for a request without a body
        return web.Response(headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    client = feed.join()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode() + await feed.first_message())
        while True:
            try:
                message = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                message = b": keepalive\n\n"
            if message is None:
                break
            await response.write(message)
    except (ConnectionError, RuntimeError):
        pass  # the page went away (aiohttp raises these for a closed transport)
    finally:
        feed.leave(client)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response


# -- dead-letter views --------------------------------------------------------------------
@DASHBOARD.get("/api/queues/{queue}/dead/groups", Access.JOB_DATA)
async def dead_groups(request: web.Request) -> web.Response:
    """The newest entries (1,000 at most) by reason and error type, counted at most every
    :data:`GROUPS_TTL` seconds for all pages together (a few milliseconds of Redis each)."""
    queue = queue_param(request)
    cache = request.app[GROUPS]
    taken_at, found = cache.get(queue, (float("-inf"), None))
    if found is None or time.monotonic() - taken_at >= GROUPS_TTL:
        found = await _browser(request).dead_groups(queue, newest=GROUP_ENTRIES)
        cache[queue] = (time.monotonic(), found)
    groups = [
        {"reason": g.reason, "error_type": g.error_type, "count": g.count} for g in found.groups
    ]
    return json_response(
        {"queue": queue, "looked_at": found.looked_at, "total": found.total, "groups": groups}
    )


@DASHBOARD.get("/api/queues/{queue}/dead/entry", Access.JOB_DATA)
async def dead_entry(request: web.Request) -> web.Response:
    """One entry, found again near where a page listed it (``offset`` of a list then
    ``total`` long); its job cut at 65,536 characters unless ``full=1``."""
    queue = queue_param(request)
    job_id = _job_id(request)
    offset = int_param(request, "offset", 0, 0, 10**9)
    total = int_param(request, "total", 0, 0, 10**9)
    full = int_param(request, "full", 0, 0, 1)
    found = await _browser(request).dead_near(queue, job_id, offset=offset, total=total)
    if found is None:
        raise ApiError(404, f"dead job {job_id!r} is no longer where it was: retried or purged?")
    fields = found.entry.fields
    entry = dict(fields) if full else preview_entry(fields, FULL_JOB_CHARS)
    return json_response({"queue": queue, "offset": found.position, "entry": entry})


@DASHBOARD.get("/api/queues/{queue}/dead/find", Access.JOB_DATA)
async def dead_find(request: web.Request) -> web.Response:
    """The newest entry of a job id among the newest 10,000 entries."""
    queue = queue_param(request)
    job_id = _job_id(request)
    found, searched = await _browser(request).dead_find(queue, job_id, newest=FIND_ENTRIES)
    body = {"queue": queue, "id": job_id, "searched": searched, "found": None}
    if found is not None:
        body["found"] = {"offset": found.position, "entry": preview_entry(found.entry.fields, 300)}
    return json_response(body)
