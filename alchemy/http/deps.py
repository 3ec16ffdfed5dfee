"""What the listener's application and its routes share: the dependencies they serve from
(:class:`Deps`, under the :data:`DEPS` key), who may call a route (:class:`Access`), the
refusal a route raises (:class:`ApiError`) and the JSON responses. :mod:`alchemy.http.app`
and :mod:`alchemy.http.handlers` both import this module and not each other (the app imports
the routes, nothing imports the app)."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web

from alchemy.config import Config, is_loopback_host
from alchemy.http.overview import OverviewCache
from alchemy.ops.metrics import Metrics
from alchemy.queue.topology import RedisClient


async def _always_ready() -> list[str]:
    return []


@dataclass(frozen=True, slots=True)
class Deps:
    """What the listener serves from. ``readiness`` returns the reasons it is not ready."""

    config: Config
    redis: RedisClient
    identity: str
    overview: OverviewCache
    metrics: Metrics | None = None
    readiness: Callable[[], Awaitable[list[str]]] = _always_ready
    started_at: float = field(default_factory=time.monotonic)
    # A new client for the live feed's blocking reads (the process's own when it runs).
    blocking: Callable[[], RedisClient] | None = None
    # Brands' budgets (alchemy.http.budgets.BudgetBook), when the process uses PostgreSQL.
    budgets: Any = None

    @property
    def queue_names(self) -> frozenset[str]:
        return frozenset(q.name for q in self.config.queues)

    @property
    def loopback_only(self) -> bool:
        """True when the listener is bound to a loopback address: only this machine."""
        return is_loopback_host(self.config.http.host)


DEPS: Final = web.AppKey("deps", Deps)


class Access(enum.Enum):
    """Who may call a route. Every route declares one (:class:`Routes` has no default), so a
    new route that serves job data cannot end up open by omission."""

    OPEN = "open"
    """``/healthz``, ``/readyz``, ``/metrics``: no job data; probes and scrapers need no
    token."""
    COUNTS = "counts"
    """Queue depths, pauses, processes: no job data. The token beyond loopback."""
    JOB_DATA = "job_data"
    """Dead-letter entries and job records carry payloads: the token whenever one is
    configured, even on loopback; without one, served on a loopback listener only."""
    CHANGE = "change"
    """Requests that change state: always the token (refused when none is configured)."""


def needs_token(access: Access, *, token_set: bool, loopback_only: bool) -> bool:
    """Whether a request for a route of ``access`` must carry the admin token. (A new
    :class:`Access` fails the type check here until its rule is written.)"""
    match access:
        case Access.OPEN:
            return False
        case Access.COUNTS:
            return not loopback_only
        case Access.JOB_DATA:
            # Payloads: the token whenever there is one, even on loopback. Without one only
            # a loopback listener serves them; the config refuses any other host without a
            # token, and this keeps the rule here too, whatever built the config.
            return token_set or not loopback_only
        case Access.CHANGE:
            return True


AnyHandler = TypeVar("AnyHandler", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    access: Access
    # Holds one of the listener's Redis slots while it runs (not a stream that stays open
    # for hours: it reads through a shared cache).
    gated: bool = True


class Routes:
    """The routes of the listener, each with its :class:`Access`, in declaration order."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def _add(
        self, method: str, path: str, access: Access, gated: bool = True
    ) -> Callable[[AnyHandler], AnyHandler]:
        def register(handler: AnyHandler) -> AnyHandler:
            self._routes.append(Route(method, path, handler, access, gated))
            return handler

        return register

    def get(
        self, path: str, access: Access, *, gated: bool = True
    ) -> Callable[[AnyHandler], AnyHandler]:
        return self._add("GET", path, access, gated)

    def post(self, path: str, access: Access) -> Callable[[AnyHandler], AnyHandler]:
        return self._add("POST", path, access)


def json_response(data: Any, *, status: int = 200, headers: Any = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, message: str, *, headers: Any = None) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


def queue_param(request: web.Request) -> str:
    """The route's ``{queue}``; 404 unless it is a configured queue."""
    name = request.match_info["queue"]
    if name not in request.app[DEPS].queue_names:
        raise ApiError(404, f"no queue named {name!r}")
    return name


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter ``name``; 400 unless it lies within ``low``-``high``."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
