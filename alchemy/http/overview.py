"""The state of every configured queue, read from Redis at most once per ``ttl``.

``/metrics``, ``GET /api/queues`` and the dashboard (its page and its live feed) all serve
it, so ten scrapes a second from several
clients cost Redis one read of each queue a second. Concurrent requests share one read; a
failed read is remembered for the same ``ttl`` (so a Redis outage is not hammered either).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alchemy.queue.admin import QueueAdmin, QueueStatus, Throughput
from alchemy.queue.browse import PerMinute, QueueBrowser
from alchemy.queue.topology import RedisClient


class OverviewUnavailable(Exception):
    """The last read of the queues from Redis failed; the message says how."""


@dataclass(frozen=True, slots=True)
class Overview:
    statuses: Mapping[str, QueueStatus]
    throughput: Mapping[str, Throughput] = field(default_factory=dict)
    oldest_wait_s: Mapping[str, float | None] = field(default_factory=dict)
    per_minute: Mapping[str, PerMinute] = field(default_factory=dict)


class OverviewCache:
    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        queues: Sequence[str],
        *,
        ttl: float = 1.0,
        with_throughput: bool = True,
    ) -> None:
        self.redis = redis
        self.admin = QueueAdmin(redis, prefix=prefix)
        self.browser = QueueBrowser(redis, prefix=prefix)
        self.prefix = prefix
        self.queues = list(queues)
        self.ttl = ttl
        self.with_throughput = with_throughput
        self.reads = 0
        self._value: Overview | None = None
        self._error: str | None = None
        self._taken_at = float("-inf")
        self._began_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def last(self) -> Overview | None:
        """The last successful read, if the last read succeeded."""
        return None if self._error is not None else self._value

    def _fresh(self, since: float) -> bool:
        return time.monotonic() - self._taken_at < self.ttl and self._began_at >= since

    async def get(self, *, since: float = float("-inf")) -> Overview:
        """The overview; :class:`OverviewUnavailable` when Redis could not be read.
        ``since`` (a ``time.monotonic()``): read after that moment (something changed
        then), even within ``ttl``."""
        if not self._fresh(since):
            async with self._lock:
                if not self._fresh(since):
                    await self._read()
        if self._error is not None:
            raise OverviewUnavailable(self._error)
        assert self._value is not None
        return self._value

    async def _read(self) -> None:
        self.reads += 1
        self._began_at = time.monotonic()
        try:
            statuses = {q: await self.admin.status(q) for q in self.queues}
            oldest = await self.browser.oldest_waiting_s(self.queues)
            throughput, minutes = {}, {}
            if self.with_throughput:
                throughput = await self.admin.throughput(self.queues)
                minutes = await self.browser.per_minute(self.queues)
            self._value, self._error = Overview(statuses, throughput, oldest, minutes), None
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            self._taken_at = time.monotonic()
