"""The routes of the HTTP listener: health, readiness, metrics and the admin API, each with
the :class:`~alchemy.http.deps.Access` it needs (enforced by :mod:`alchemy.http.app`)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from alchemy.http.board import preview_entry
from alchemy.http.deps import (
    DEPS,
    Access,
    ApiError,
    Deps,
    Routes,
    int_param,
    json_response,
    queue_param,
)
from alchemy.http.overview import OverviewUnavailable
from alchemy.http.types import (
    ConsumerInfo,
    DeadPage,
    Health,
    PauseResult,
    PurgeResult,
    QueueInfo,
    QueueList,
    Readiness,
    RetryResult,
    Throughput,
    ThroughputWindow,
    UnknownJob,
)
from alchemy.queue import admin as queue_admin
from alchemy.queue.admin import TRUNCATED_NOTE, QueueAdmin, QueueStatus
from alchemy.queue.job import MAX_ID_LENGTH

ROUTES: Final = Routes()
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 500
MAX_PREVIEW: Final = 10_000  # characters of each job a dead page's ?preview= keeps at most


def _deps(request: web.Request) -> Deps:
    return request.app[DEPS]


def _admin(deps: Deps) -> QueueAdmin:
    return QueueAdmin(deps.redis, prefix=deps.config.redis.prefix)


# -- health, readiness, metrics -------------------------------------------------------------
@ROUTES.get("/healthz", Access.OPEN)
async def healthz(request: web.Request) -> web.Response:
    """Answers while the event loop runs."""
    deps = _deps(request)
    body: Health = {
        "status": "ok",
        "worker": deps.identity,
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - deps.started_at, 3),
    }
    return json_response(body)


@ROUTES.get("/readyz", Access.OPEN)
async def readyz(request: web.Request) -> web.Response:
    deps = _deps(request)
    reasons = await deps.readiness()
    body: Readiness = {
        "ready": not reasons,
        "worker": deps.identity,
        "reasons": reasons,
        "providers": deps.config.providers.in_use(),
    }
    return json_response(body, status=503 if reasons else 200)


@ROUTES.get("/metrics", Access.OPEN)
async def metrics(request: web.Request) -> web.Response:
    deps = _deps(request)
    if deps.metrics is None:
        raise ApiError(404, "metrics are not collected in this process")
    # Refreshes the depth gauges (at most once a second). Without Redis alchemy_redis_up
    # says so, and the counters are still worth serving.
    with contextlib.suppress(OverviewUnavailable):
        await deps.overview.get()
    if deps.budgets is not None:  # the budget gauges, from PostgreSQL (absent when it is away)
        deps.metrics.budgets.report = await deps.budgets.for_scrape()
    return web.Response(body=deps.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- queues -------------------------------------------------------------------------------
def _window(completed: int, failed: int, seconds: int) -> ThroughputWindow:
    return {
        "completed": completed,
        "failed": failed,
        "completed_per_s": round(completed / seconds, 3),
    }


def _throughput(t: queue_admin.Throughput | None) -> Throughput | None:
    if t is None:
        return None
    return {
        "last_minute": _window(t.completed_1m, t.failed_1m, 60),
        "last_5_minutes": _window(t.completed_5m, t.failed_5m, queue_admin.THROUGHPUT_WINDOW_S),
    }


def _queue_info(status: QueueStatus, throughput: queue_admin.Throughput | None) -> QueueInfo:
    consumers: list[ConsumerInfo] = [
        {"identity": c.identity, "alive": c.alive, "processing": c.processing}
        for c in status.consumers
    ]
    return {
        "queue": status.queue,
        "wait": status.wait,
        "processing": status.processing,
        "delayed": status.delayed,
        "dead": status.dead,
        "paused": status.paused,
        "paused_for_ms": status.paused_for_ms,
        "held": status.held,
        "budget_held": status.budget_held,
        "consumers": consumers,
        "throughput": _throughput(throughput),
    }


@ROUTES.get("/api/queues", Access.COUNTS)
async def list_queues(request: web.Request) -> web.Response:
    overview = await _deps(request).overview.get()
    body: QueueList = {
        "queues": [
            _queue_info(status, overview.throughput.get(name))
            for name, status in overview.statuses.items()
        ]
    }
    return json_response(body)


@ROUTES.get("/api/queues/{queue}", Access.COUNTS)
async def show_queue(request: web.Request) -> web.Response:
    name = queue_param(request)
    overview = await _deps(request).overview.get()
    return json_response(_queue_info(overview.statuses[name], overview.throughput.get(name)))


# -- the dead-letter list -------------------------------------------------------------------
@ROUTES.get("/api/queues/{queue}/dead", Access.JOB_DATA)
async def list_dead(request: web.Request) -> web.Response:
    queue = queue_param(request)
    offset = int_param(request, "offset", 0, 0, 10**9)
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    preview = int_param(request, "preview", 0, 0, MAX_PREVIEW)  # 0: jobs whole
    page = await _admin(_deps(request)).dead_page(queue, offset=offset, limit=limit)
    entries = [dict(entry.fields) for entry in page.entries]
    body: DeadPage = {
        "queue": queue,
        "total": page.total,
        "offset": offset,
        "limit": limit,
        "entries": [preview_entry(e, preview) for e in entries] if preview else entries,
    }
    return json_response(body)


async def _which(request: web.Request) -> str | None:
    """The job id a retry or purge names in its body, or None for ``{"all": true}``."""
    body: Any = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object: {"id": "..."} or {"all": true}')
    job_id, every = body.get("id"), body.get("all", False)
    if (job_id is None) == (every is not True) or not isinstance(every, bool):
        raise ApiError(400, 'give exactly one of {"id": "..."} and {"all": true}')
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID_LENGTH:
        raise ApiError(400, f"id must be a string of 1-{MAX_ID_LENGTH} characters")
    return job_id


@ROUTES.post("/api/queues/{queue}/dead/retry", Access.CHANGE)
async def retry_dead(request: web.Request) -> web.Response:
    queue = queue_param(request)
    job_id = await _which(request)
    admin = _admin(_deps(request))
    if job_id is None:
        result = await admin.dead_retry_all(queue)
    else:
        result = await admin.dead_retry(queue, job_id)
        if not result.retried and result.truncated:
            raise ApiError(409, f"dead job {job_id!r} in {queue}: {TRUNCATED_NOTE}")
        if not result.retried:
            raise ApiError(404, f"no dead job with id {job_id!r} in {queue}")
    body: RetryResult = {
        "queue": queue,
        "retried": result.retried,
        "skipped_truncated": result.truncated,
    }
    return json_response(body)


@ROUTES.post("/api/queues/{queue}/dead/purge", Access.CHANGE)
async def purge_dead(request: web.Request) -> web.Response:
    queue = queue_param(request)
    job_id = await _which(request)
    count = await _admin(_deps(request)).dead_purge(queue, job_id)
    if job_id is not None and not count:
        raise ApiError(404, f"no dead job with id {job_id!r} in {queue}")
    body: PurgeResult = {"queue": queue, "purged": count}
    return json_response(body)


# -- pause and resume -----------------------------------------------------------------------
@ROUTES.post("/api/queues/{queue}/pause", Access.CHANGE)
async def pause(request: web.Request) -> web.Response:
    queue = queue_param(request)
    await _admin(_deps(request)).pause(queue)
    body: PauseResult = {"queue": queue, "paused": True}
    return json_response(body)


@ROUTES.post("/api/queues/{queue}/resume", Access.CHANGE)
async def resume(request: web.Request) -> web.Response:
    queue = queue_param(request)
    await _admin(_deps(request)).resume(queue)
    body: PauseResult = {"queue": queue, "paused": False}
    return json_response(body)


# -- jobs -----------------------------------------------------------------------------------
@ROUTES.get("/api/queues/{queue}/jobs/{job_id:.+}", Access.JOB_DATA)
async def show_job(request: web.Request) -> web.Response:
    queue = queue_param(request)
    job_id = request.match_info["job_id"]
    if len(job_id) > MAX_ID_LENGTH:
        raise ApiError(400, f"job ids have at most {MAX_ID_LENGTH} characters")
    deps = _deps(request)
    records = deps.config.records
    if not records.enabled:
        raise ApiError(404, "job records are off in this process ([records] enabled = false)")
    record = await _admin(deps).record(queue, job_id)
    if record is None:
        unknown: UnknownJob = {
            "error": "no record of this job: waiting for its first attempt, expired, or never"
            " enqueued",
            "id": job_id,
            "state": "unknown",
        }
        return json_response(unknown, status=404)
    return json_response(record)
