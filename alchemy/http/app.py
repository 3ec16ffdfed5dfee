"""The aiohttp application of a worker's HTTP listener: :func:`create_app` builds it from
its dependencies (:class:`~alchemy.http.deps.Deps`); the routes are in
:mod:`alchemy.http.handlers`.

Every error is JSON (``{"error": "..."}``) with a fitting status; a bug answers 500 with
``{"error": "internal error"}`` and is logged, never shown. Requests under ``/api/`` that
change state need ``Authorization: Bearer <http.admin_token>`` (401 otherwise, compared in
constant time); when the listener is not on a loopback address, reads under ``/api/`` need
it too, since dead-letter entries carry job payloads.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from redis import exceptions as redis_errors

from alchemy.errors import ConfigError
from alchemy.http.deps import DEPS, ApiError, Deps, error_response
from alchemy.http.handlers import ROUTES
from alchemy.http.overview import OverviewUnavailable

log = structlog.get_logger("alchemy.http")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
REDIS_SLOTS: Final = 8  # requests reading or writing Redis at once (the pool is shared)
REDIS_GATE: Final = web.AppKey("redis_gate", asyncio.Semaphore)


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
    app = web.Application(middlewares=[errors_as_json, admin_guard], client_max_size=64 * 1024)
    app[DEPS] = deps
    app[REDIS_GATE] = asyncio.Semaphore(REDIS_SLOTS)
    app.add_routes(ROUTES)
    return app
