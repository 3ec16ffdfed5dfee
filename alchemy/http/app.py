"""The aiohttp application of a worker's HTTP listener: :func:`create_app` builds it from
its dependencies; the routes are in :mod:`alchemy.http.handlers`.

Every error is JSON (``{"error": "..."}``) with a fitting status; a bug answers 500 with
``{"error": "internal error"}`` and is logged, never shown. Requests under ``/api/`` that
change state need ``Authorization: Bearer <http.admin_token>`` (401 otherwise, compared in
constant time); when the listener is not on a loopback address, reads under ``/api/`` need
it too, since dead-letter entries carry job payloads.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from alchemy.config import Config, is_loopback_host
from alchemy.errors import ConfigError
from alchemy.http.overview import OverviewCache, OverviewUnavailable
from alchemy.ops.metrics import Metrics

log = structlog.get_logger("alchemy.http")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
REDIS_SLOTS: Final = 8  # requests reading or writing Redis at once (the pool is shared)


async def _always_ready() -> list[str]:
    return []


@dataclass(frozen=True, slots=True)
class Deps:
    """What the listener serves from. ``readiness`` returns the reasons it is not ready."""

    config: Config
    redis: Redis
    identity: str
    overview: OverviewCache
    metrics: Metrics | None = None
    readiness: Callable[[], Awaitable[list[str]]] = _always_ready
    started_at: float = field(default_factory=time.monotonic)

    @property
    def queue_names(self) -> frozenset[str]:
        return frozenset(q.name for q in self.config.queues)

    @property
    def reads_need_token(self) -> bool:
        return not is_loopback_host(self.config.http.host)


DEPS: Final = web.AppKey("deps", Deps)
REDIS_GATE: Final = web.AppKey("redis_gate", asyncio.Semaphore)


def json_response(data: Any, *, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, message: str, *, headers: Any = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in {"content-type", "content-length"}
        }
        return error_response(exc.status, exc.reason, headers=headers)
    except OverviewUnavailable as exc:
        return error_response(503, f"redis unavailable: {exc}")
    except (redis_errors.RedisError, OSError) as exc:
        log.warning("http_redis_failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return error_response(503, f"redis unavailable: {type(exc).__name__}")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return error_response(500, "internal error")


def check_token(request: web.Request) -> None:
    """Raise :class:`ApiError` 401 unless the request carries the admin token."""
    token = request.app[DEPS].config.http.admin_token.reveal()
    if not token:
        raise ApiError(
            401, "no admin token is configured (http.admin_token, env ALCHEMY_ADMIN_TOKEN)"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )
    if not ok:
        raise ApiError(401, "missing or wrong bearer token")


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        deps = request.app[DEPS]
        if request.method not in SAFE_METHODS or deps.reads_need_token:
            try:
                check_token(request)
            except ApiError as exc:
                return error_response(
                    exc.status, exc.message, headers={"WWW-Authenticate": 'Bearer realm="alchemy"'}
                )
        async with request.app[REDIS_GATE]:
            return await handler(request)
    return await handler(request)


def create_app(deps: Deps) -> web.Application:
    """The listener's application. Refuses a non-loopback host without an admin token."""
    http = deps.config.http
    if deps.reads_need_token and not http.admin_token:
        raise ConfigError(
            "http.admin_token",
            f"must be set (env ALCHEMY_ADMIN_TOKEN) because http.host = {http.host!r} "
            "is not a loopback address",
        )
    from alchemy.http.handlers import ROUTES

    app = web.Application(middlewares=[errors_as_json, admin_guard], client_max_size=64 * 1024)
    app[DEPS] = deps
    app[REDIS_GATE] = asyncio.Semaphore(REDIS_SLOTS)
    app.add_routes(ROUTES)
    return app
