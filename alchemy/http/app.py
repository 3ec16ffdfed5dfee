"""The aiohttp application of a worker's HTTP listener: :func:`create_app` builds it from
its dependencies (:class:`~alchemy.http.deps.Deps`); the routes are in
:mod:`alchemy.http.handlers`.

Every request passes, in order:

1. :func:`errors_as_json`: every error is JSON (``{"error": "..."}``) with a fitting status;
   a bug answers 500 with ``{"error": "internal error"}`` and is logged, never shown.
2. :func:`host_guard`: the ``Host`` header must name this listener (loopback names, the
   configured host, ``http.allowed_hosts``), on every route: 400 without one, 421 for another
   (:mod:`alchemy.http.hosts`, against DNS rebinding).
3. :func:`access_guard`: the route's :class:`~alchemy.http.deps.Access` decides whether
   ``Authorization: Bearer <http.admin_token>`` is needed (401 otherwise, compared in
   constant time; see :func:`needs_token`).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from redis import exceptions as redis_errors

from alchemy.errors import ConfigError
from alchemy.http.board import snapshot
from alchemy.http.budgets import BUDGET_ROUTES
from alchemy.http.dashboard import DASHBOARD, GROUPS, LIVE, STATIC
from alchemy.http.deps import DEPS, Access, ApiError, Deps, error_response, needs_token
from alchemy.http.handlers import ROUTES
from alchemy.http.hosts import MALFORMED, HostCheck, host_of
from alchemy.http.live import LiveFeed
from alchemy.http.media import MEDIA_FILES, MEDIA_ROUTES, MediaFiles
from alchemy.http.overview import OverviewUnavailable
from alchemy.http.static import SECURITY_HEADERS, load_static
from alchemy.worker.connections import RedisClients

log = structlog.get_logger("alchemy.http")

REDIS_SLOTS: Final = 8  # requests reading or writing Redis at once (the pool is shared)
REDIS_GATE: Final = web.AppKey("redis_gate", asyncio.Semaphore)
HOSTS: Final = web.AppKey("hosts", HostCheck)
ACCESS: Final = web.AppKey("access", Mapping[Handler, Access])
UNGATED: Final = web.AppKey("ungated", frozenset[Handler])
CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="alchemy"'}


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
async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    hosts = request.app[HOSTS]
    given = request.headers.getall("Host", [])
    host = host_of(given[0]) if len(given) == 1 else None
    if host is None:
        hosts.note_refused(MALFORMED, path=request.path, peer=request.remote)
        return error_response(400, "a request needs one Host header naming a host")
    if not hosts.answers(host):
        hosts.note_refused(host, path=request.path, peer=request.remote)
        return error_response(421, f"this listener does not answer for the host {host!r}")
    return await handler(request)


@web.middleware
async def access_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None:  # no route (404, 405): nothing to guard
        return await handler(request)
    access = request.app[ACCESS].get(match.handler, Access.CHANGE)  # unknown: strictest
    deps = request.app[DEPS]
    token_set = bool(deps.config.http.admin_token)
    if needs_token(access, token_set=token_set, loopback_only=deps.loopback_only):
        try:
            check_token(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, headers=CHALLENGE)
    if access is Access.OPEN or match.handler in request.app[UNGATED]:
        return await handler(request)
    async with request.app[REDIS_GATE]:
        return await handler(request)


def create_app(deps: Deps) -> web.Application:
    """The listener's application. Refuses a non-loopback host without an admin token."""
    http = deps.config.http
    if not deps.loopback_only and not http.admin_token:
        raise ConfigError(
            "http.admin_token",
            f"must be set (env ALCHEMY_ADMIN_TOKEN) because http.host = {http.host!r} "
            "is not a loopback address",
        )
    app = web.Application(
        middlewares=[errors_as_json, host_guard, access_guard], client_max_size=64 * 1024
    )
    app[DEPS] = deps
    app[HOSTS] = HostCheck(http)
    app[REDIS_GATE] = asyncio.Semaphore(REDIS_SLOTS)
    app[STATIC] = load_static()
    app[GROUPS] = {}
    app[LIVE] = _live_feed(deps)
    app[MEDIA_FILES] = MediaFiles.of(deps.config)
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_close_live)
    access: dict[Handler, Access] = {}
    ungated: set[Handler] = set()
    prefix = http.path_prefix
    for route in (*ROUTES, *BUDGET_ROUTES, *DASHBOARD, *MEDIA_ROUTES):
        path = prefix + route.path
        if route.method == "GET":
            app.router.add_get(path, route.handler)  # and HEAD
        else:
            app.router.add_route(route.method, path, route.handler)
        access[route.handler] = route.access
        if not route.gated:
            ungated.add(route.handler)
    if prefix:  # the page's relative links need the slash
        app.router.add_get(prefix, _to_slash)
        access[_to_slash] = Access.OPEN
    app[ACCESS] = access
    app[UNGATED] = frozenset(ungated)
    return app


def _live_feed(deps: Deps) -> LiveFeed:
    config = deps.config

    async def render(since: float) -> dict[str, Any]:
        return snapshot(await deps.overview.get(since=since), deps)

    connect = deps.blocking or (lambda: RedisClients(config.redis).blocking())
    return LiveFeed(
        prefix=config.redis.prefix,
        queues=[q.name for q in config.queues],
        connect=connect,
        render=render,
    )


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def _close_live(app: web.Application) -> None:
    await app[LIVE].close()


async def _to_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(request.app[DEPS].config.http.path_prefix + "/")
