"""Dependencies that are down, and the holds that keep their queues from burning attempts.

When a handler raises :class:`~alchemy.errors.DependencyUnavailableError`, its job goes back
to the front of its queue without spending an attempt and the queue's ``held`` key is set
(one atomic step, :meth:`QueueStore.hold`). Every process's claims see the key, so the queue
holds everywhere, like a "retry after" pause. The process that saw the failure probes the
dependency with a capped backoff, renewing the hold of every queue it serves that needs the
dependency; when the probe answers it lifts those holds and the jobs run as if nothing had
happened. If that process dies, the holds expire after :data:`HOLD_TTL` and the next job to
find the dependency down starts the same again elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Final

import orjson
import structlog

from alchemy.logs import redact
from alchemy.queue.store import QueueStore
from alchemy.worker.connections import Episode, describe, until_done
from alchemy.worker.health import process_health

log = structlog.get_logger("alchemy.dependencies")

Probe = Callable[[], Awaitable[object]]

HOLD_TTL: Final = 15.0  # seconds a hold lasts unless its prober renews it
PROBE_FIRST: Final = 0.25  # seconds before the first probe, doubling ...
PROBE_MAX: Final = 5.0  # ... up to this
PROBE_TIMEOUT: Final = 5.0  # seconds one probe may take


def pause_value(dependency: str, reason: str, identity: str) -> bytes:
    """The held key's JSON for a provider's pause (its own spend limit): no prober renews
    it; it lasts its TTL (``[budgets] provider_pause``) unless ``alchemy resume`` lifts it."""
    return orjson.dumps(
        {
            "dependency": dependency,
            "reason": redact(reason)[:500],
            "since_ms": int(time.time() * 1000),
            "by": identity,
            "until": "resumed",
        }
    )


class DependencyMonitor:
    """The dependencies this process found down, and their probes.

    ``stores``: this process's queues; ``requires``: queue name → the dependencies its
    handler module lists in ``REQUIRES``; ``probes``: dependency → a coroutine function that
    raises while the dependency does not answer. A dependency without a probe is tried again
    by the queue's next job, after the backoff."""

    def __init__(
        self,
        *,
        identity: str,
        stores: Sequence[QueueStore],
        requires: Mapping[str, Sequence[str]],
        probes: Mapping[str, Probe],
        hold_ttl: float = HOLD_TTL,
        probe_first: float = PROBE_FIRST,
        probe_max: float = PROBE_MAX,
    ) -> None:
        self.identity = identity
        self.stores = {store.queue: store for store in stores}
        self.requires = requires
        self.probes = probes
        self.hold_ttl = hold_ttl
        self.probe_first = probe_first
        self.probe_max = probe_max
        self._probing: dict[str, asyncio.Task[None]] = {}

    def hold_value(self, dependency: str, reason: str) -> bytes:
        """The held key's JSON (docs/protocol.md, the key table)."""
        return orjson.dumps(
            {
                "dependency": dependency,
                "reason": redact(reason)[:500],
                "since_ms": int(time.time() * 1000),
                "by": self.identity,
            }
        )

    def down(self, dependency: str, queue: str, reason: str) -> None:
        """A job of ``queue`` found ``dependency`` down: start probing it (once)."""
        if dependency in self._probing:
            return
        task = asyncio.create_task(self._watch(dependency, reason), name=f"probe:{dependency}")
        self._probing[dependency] = task
        task.add_done_callback(lambda _: self._probing.pop(dependency, None))

    @property
    def down_now(self) -> list[str]:
        return sorted(self._probing)

    def queues_needing(self, dependency: str) -> list[str]:
        return [q for q, needs in self.requires.items() if dependency in needs and q in self.stores]

    async def _watch(self, dependency: str, reason: str) -> None:
        started = time.monotonic()
        queues = self.queues_needing(dependency)
        process_health.fail(f"dependency:{dependency}", f"down: {reason} ({queues})")
        log.warning("dependency_down", dependency=dependency, reason=reason, held=queues)
        renewing = Episode(f"hold:{dependency}")
        probe = self.probes.get(dependency)
        delay = self.probe_first if probe is not None else self.probe_max
        probes = 0
        while True:
            try:
                await self._renew(dependency, reason, queues)
                renewing.succeeded()
            except Exception as exc:  # Redis away: the holds outlive a short outage anyway
                renewing.failed(exc, step="hold", dependency=dependency)
            await asyncio.sleep(delay)
            if probe is None:
                break  # no probe: the queue's next job finds out
            probes += 1
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await probe()
                break
            except Exception as exc:
                reason = describe(exc)
                process_health.fail(
                    f"dependency:{dependency}", f"down: {reason} (holding {queues})"
                )
                delay = min(self.probe_max, delay * 2)
        for queue in queues:
            release = partial(self.stores[queue].release_hold, dependency)
            await until_done(release, what="release_hold", queue=queue)
        process_health.clear(f"dependency:{dependency}")
        log.info(
            "dependency_up",
            dependency=dependency,
            down_for_s=round(time.monotonic() - started, 3),
            probes=probes,
            released=queues,
        )

    async def _renew(self, dependency: str, reason: str, queues: Sequence[str]) -> None:
        value = self.hold_value(dependency, reason)
        for queue in queues:
            await self.stores[queue].renew_hold(dependency, value, self.hold_ttl)

    async def close(self) -> None:
        """Stop probing; the holds stay until their TTL (the dependency is still down as far
        as anyone knows)."""
        tasks = list(self._probing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
