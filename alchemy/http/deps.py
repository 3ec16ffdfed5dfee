"""What the listener's application and its routes share: the dependencies they serve from
(:class:`Deps`, under the :data:`DEPS` key), the refusal a route raises (:class:`ApiError`)
and the JSON responses. :mod:`alchemy.http.app` and :mod:`alchemy.http.handlers` both import
this module and not each other (the app imports the routes, nothing imports the app)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from redis.asyncio import Redis

from alchemy.config import Config, is_loopback_host
from alchemy.http.overview import OverviewCache
from alchemy.ops.metrics import Metrics


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
