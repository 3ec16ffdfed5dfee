"""Public operations of one queue, each one atomic Redis step (see scripts.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from alchemy.queue import scripts
from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient

PROMOTE_BATCH: Final = 100
DEFAULT_MAX_DEAD: Final = 100_000  # [queues.NAME] max_dead
OLDEST_END: Final = -1  # LREM from the oldest end of a dead-letter list
NEWEST_END: Final = 1


class ClaimKind(Enum):
    JOBS = 1
    EMPTY = 0
    THROTTLED = 2
    PAUSED = 3
    HELD = 4
    GONE = 5  # (confirm only) the item already went back: a re-sent step
    SCHEDULED = 6  # taken with the next token: start it in ``wait_ms``


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    items: Sequence[bytes] = ()
    # THROTTLED / PAUSED / HELD: how long (-1: paused until resumed); EMPTY: when the next
    # retry is due (-1: none); SCHEDULED: when to start the job
    wait_ms: int = 0
    hold: bytes | None = None  # HELD: the held key's JSON (dependency, reason...)
    # JOBS / SCHEDULED: Redis's clock (ms) when the tokens were taken; a job's token is due
    # at redis_ms + wait_ms
    redis_ms: int = 0


# The refill is slower than limit/period by GUARD_PER_WINDOW seconds per period (within
# these bounds), so that starts recorded a little after their token (a timer that woke late
# on a busy machine, a clock read in another process) still fall inside the limit in every
# window: a window of one period holds at most limit + burst starts even when each start is
# up to that late.
GUARD_PER_WINDOW: Final = 0.1
GUARD_MIN: Final = 0.005
GUARD_MAX: Final = 0.04


def rate_guard(period: float) -> float:
    """The fraction by which the refill is slower than ``limit / period``."""
    return min(GUARD_MAX, max(GUARD_MIN, GUARD_PER_WINDOW / period))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` starts in any window of ``period`` seconds, across every process,
    plus ``burst`` more after a quiet spell: a token bucket holding 1 + ``burst`` tokens,
    refilled at ``limit / period``. With a backlog, starts come one refill interval apart."""

    limit: int
    period: float
    burst: int = 0

    @property
    def per_ms(self) -> float:
        if not self.limit:
            return 0.0
        return self.limit / (self.period * 1000.0) / (1.0 + rate_guard(self.period))

    @property
    def late_start_ms(self) -> float:
        """How much later than its token a start may come: half of what the guard leaves
        per window (the other half covers what no check sees, the moment between the check
        and the handler's first step)."""
        return rate_guard(self.period) * self.period * 1000.0 / 2

    @property
    def capacity(self) -> int:
        return 1 + self.burst

    @property
    def ttl_ms(self) -> int:
        if not self.limit:
            return 1000
        return math.ceil(self.capacity / self.per_ms) + 1000

    def args(self) -> list[Any]:
        return [repr(self.per_ms), self.capacity, self.ttl_ms]


UNLIMITED: Final = RateLimit(0, 1.0, 0)


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """One job a recovery took out of a dead process's processing list."""

    job_id: str | None  # None: the item had no readable id
    attempt: int  # the attempt that was running when the process died
    recoveries: int  # deaths counted for this job so far, this one included
    poisoned: bool  # True: dead-lettered as ``poison``; False: back on the wait list
    raw_job: bytes = b""  # poisoned: the producer's job, as it went to the dead-letter list


@dataclass(frozen=True, slots=True)
class DeadScan:
    """One bounded step through a dead-letter list, oldest first (scripts.DEAD_SCAN)."""

    position: int  # where the next step starts: entries passed, from the oldest end
    trimmed: int  # the list's trimmed count when ``position`` was taken
    length: int  # the list's length then
    found: Sequence[tuple[int, bytes]]  # (position, entry) of the entries wanted

    @property
    def done(self) -> bool:
        return self.position >= self.length

    def end_of(self, position: int) -> int:
        """The end of the list an entry at ``position`` is nearer to (for LREM)."""
        return OLDEST_END if position < self.length / 2 else NEWEST_END


BUDGET_HOLDS_LOOK_AT: Final = 2000  # delayed jobs looked at to count those held for budgets


class _Scripts:
    """The Lua steps, registered once per Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self.claim = redis.register_script(scripts.CLAIM)
        self.confirm = redis.register_script(scripts.CONFIRM)
        self.hold = redis.register_script(scripts.HOLD)
        self.hold_renew = redis.register_script(scripts.HOLD_RENEW)
        self.hold_release = redis.register_script(scripts.HOLD_RELEASE)
        self.ack = redis.register_script(scripts.ACK)
        self.retry = redis.register_script(scripts.RETRY)
        self.defer_and_pause = redis.register_script(scripts.DEFER_AND_PAUSE)
        self.dead_letter = redis.register_script(scripts.DEAD_LETTER)
        self.requeue = redis.register_script(scripts.REQUEUE)
        self.requeue_front = redis.register_script(scripts.REQUEUE_FRONT)
        self.requeue_all = redis.register_script(scripts.REQUEUE_ALL)
        self.recover = redis.register_script(scripts.RECOVER)
        self.heartbeat = redis.register_script(scripts.HEARTBEAT)
        self.deregister = redis.register_script(scripts.DEREGISTER)
        self.dead_scan = redis.register_script(scripts.DEAD_SCAN)
        self.retry_dead = redis.register_script(scripts.RETRY_DEAD)
        self.purge_dead = redis.register_script(scripts.PURGE_DEAD)
        self.release_budget_holds = redis.register_script(scripts.RELEASE_BUDGET_HOLDS)
        self.count_budget_holds = redis.register_script(scripts.COUNT_BUDGET_HOLDS)


async def _run(script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args)


class QueueStore:
    """The Redis side of one queue as seen by one process (``identity``)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        queue: str,
        identity: str,
        rate: RateLimit = UNLIMITED,
        max_dead: int = DEFAULT_MAX_DEAD,
    ) -> None:
        self.redis = redis
        self.keys = QueueKeys(prefix, queue)
        self.queue = queue
        self.identity = identity
        self.rate = rate
        self.max_dead = max_dead  # entries a dead-letter step keeps (the oldest go)
        self.processing = self.keys.processing(identity)
        self._s = _Scripts(redis)

    # -- fetching -------------------------------------------------------------------------
    async def claim(self, max_jobs: int) -> Claim:
        """Promote due retries, then take up to ``max_jobs`` jobs and as many tokens."""
        k = self.keys
        reply = await _run(
            self._s.claim,
            [k.wait, self.processing, k.delayed, k.bucket, k.paused_until, k.paused, k.held],
            [max_jobs, *self.rate.args(), PROMOTE_BATCH],
        )
        return _claim(reply)

    async def block_fetch(self, connection: RedisClient, block_seconds: float) -> bytes | None:
        """BRPOPLPUSH on a connection of its own, with a server-side timeout."""
        item = await connection.brpoplpush(self.keys.wait, self.processing, block_seconds)
        return cast(bytes | None, item)

    async def block_fetch_gated(
        self, connection: Redis, block_seconds: float
    ) -> tuple[bytes | None, bool]:
        """BRPOPLPUSH with a read of the queue's pause and hold keys pipelined behind it on
        the same connection. A blocked client's next command waits in Redis until the block
        ends, so Redis reads the keys right after it hands the job over and both replies
        come back together: a queue without a rate limit knows, without a confirming round
        trip, whether the job may start. Returns the item (None: the block timed out) and
        whether every gate was open (no pause, no hold) just after it was taken."""
        k = self.keys
        async with connection.pipeline(transaction=False) as pipe:
            pipe.brpoplpush(k.wait, self.processing, block_seconds)
            pipe.mget(k.paused, k.paused_until, k.held)
            item, gates = await pipe.execute(raise_on_error=False)
        if isinstance(item, Exception):
            raise item
        if item is None:
            return None, False
        # Anything else (a key set, or the read failing) lets the confirm script decide.
        return cast(bytes, item), isinstance(gates, list) and not any(gates)

    async def confirm(self, item: bytes) -> Claim:
        """After a blocking fetch: take a token and go on (JOBS), or the job went back to
        the front of the wait list (THROTTLED, PAUSED, HELD, GONE)."""
        k = self.keys
        reply = await _run(
            self._s.confirm,
            [self.processing, k.wait, k.paused_until, k.paused, k.held, k.bucket],
            [item, *self.rate.args()],
        )
        kind = int(reply[0])
        if kind == ClaimKind.JOBS.value:
            return Claim(ClaimKind.JOBS, items=(item,), redis_ms=int(reply[1]))
        if kind == ClaimKind.SCHEDULED.value:
            wait_ms, redis_ms = int(reply[1]), int(reply[2])
            return Claim(ClaimKind.SCHEDULED, items=(item,), wait_ms=wait_ms, redis_ms=redis_ms)
        return _claim(reply)

    # -- finishing ------------------------------------------------------------------------
    async def ack(self, items: Sequence[bytes]) -> int:
        return int(await _run(self._s.ack, [self.processing], list(items)))

    async def retry(self, item: bytes, envelope: bytes, delay: float) -> bool:
        ms = max(0, round(delay * 1000))
        keys = [self.processing, self.keys.delayed]
        return bool(await _run(self._s.retry, keys, [item, envelope, ms]))

    async def defer_and_pause(self, item: bytes, envelope: bytes, delay: float) -> bool:
        ms = max(1, round(delay * 1000))
        keys = [self.processing, self.keys.delayed, self.keys.paused_until]
        return bool(await _run(self._s.defer_and_pause, keys, [item, envelope, ms]))

    async def dead_letter(self, item: bytes, entry: bytes) -> bool:
        keys = [self.processing, self.keys.dead, self.keys.dead_trimmed]
        return bool(await _run(self._s.dead_letter, keys, [item, entry, self.max_dead]))

    async def requeue(self, item: bytes) -> bool:
        return bool(await _run(self._s.requeue, [self.processing, self.keys.wait], [item]))

    async def hold(self, item: bytes, envelope: bytes, hold: bytes, ttl: float) -> bool:
        """Back to the front of the wait list as ``envelope`` and hold the queue (``hold``:
        the held key's JSON) for ``ttl`` seconds unless renewed."""
        keys = [self.processing, self.keys.wait, self.keys.held]
        ms = max(1, round(ttl * 1000))
        return bool(await _run(self._s.hold, keys, [item, envelope, hold, ms]))

    async def renew_hold(self, dependency: str, hold: bytes, ttl: float) -> bool:
        """Set or lengthen the queue's hold for ``dependency`` (not one of another's)."""
        ms = max(1, round(ttl * 1000))
        return bool(await _run(self._s.hold_renew, [self.keys.held], [hold, ms, dependency]))

    async def release_hold(self, dependency: str) -> bool:
        """Lift the queue's hold if ``dependency`` is what holds it."""
        return bool(await _run(self._s.hold_release, [self.keys.held], [dependency]))

    async def release_budget_holds(self, scope: str) -> int:
        """The delayed jobs held for ``scope``'s budget (``brand <uuid>``, ``provider
        <name>``) are due now: its operator raised the budget. Returns how many."""
        keys = [self.keys.delayed, self.keys.wait]
        return int(await _run(self._s.release_budget_holds, keys, [scope]))

    async def budget_holds(self, look_at: int = BUDGET_HOLDS_LOOK_AT) -> dict[str, int]:
        """Delayed jobs held for a budget, per scope (``brand:<uuid>``, ``provider:<name>``),
        among the ``look_at`` soonest due (read every second for the dashboard and
        /metrics: bounded, so a large delayed set costs no more)."""
        reply = await _run(self._s.count_budget_holds, [self.keys.delayed], [look_at])
        return {
            _text(reply[i]).replace(" ", ":", 1): int(reply[i + 1]) for i in range(0, len(reply), 2)
        }

    async def requeue_front(self, item: bytes, envelope: bytes) -> bool:
        """Back to the front of the wait list as ``envelope`` (no attempt spent)."""
        keys = [self.processing, self.keys.wait]
        return bool(await _run(self._s.requeue_front, keys, [item, envelope]))

    async def requeue_all(self) -> int:
        return int(await _run(self._s.requeue_all, [self.processing, self.keys.wait], []))

    async def processing_items(self) -> list[bytes]:
        items = await self.redis.lrange(self.processing, 0, -1)
        return cast(list[bytes], items)

    # -- membership -----------------------------------------------------------------------
    async def heartbeat(self, value: str, ttl: float) -> None:
        keys = [self.keys.consumers, self.keys.heartbeat(self.identity)]
        await _run(self._s.heartbeat, keys, [self.identity, value, max(1, round(ttl * 1000))])

    async def heartbeat_of(self, identity: str) -> bytes | None:
        value = await self.redis.get(self.keys.heartbeat(identity))
        return cast(bytes | None, value)

    async def consumers(self) -> list[str]:
        members = await self.redis.zrange(self.keys.consumers, 0, -1)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def recover(
        self, identity: str, *, max_recoveries: int, require_dead: bool
    ) -> list[RecoveredJob] | None:
        """Return a process's processing list to the wait list, counting a recovery for each
        job and dead-lettering those past ``max_recoveries``; say what happened to each job.
        ``None``: it is alive."""
        k = self.keys
        reply = await _run(
            self._s.recover,
            [
                k.processing(identity),
                k.wait,
                k.dead,
                k.heartbeat(identity),
                k.consumers,
                k.dead_trimmed,
            ],
            [identity, max_recoveries, self.queue, "1" if require_dead else "0", self.max_dead],
        )
        if int(reply[0]) == -1:
            return None
        return [
            RecoveredJob(
                job_id=_text(reply[n]) or None,
                attempt=int(reply[n + 1]),
                recoveries=int(reply[n + 2]),
                poisoned=reply[n + 3] in (b"p", "p"),
                raw_job=_bytes(reply[n + 4]),
            )
            for n in range(1, len(reply), 5)
        ]

    async def deregister(self) -> bool:
        k = self.keys
        keys = [k.consumers, k.heartbeat(self.identity), self.processing]
        return bool(await _run(self._s.deregister, keys, [self.identity]))

    # -- dead letters ---------------------------------------------------------------------
    async def scan_dead(
        self,
        position: int,
        trimmed: int,
        *,
        max_entries: int,
        max_bytes: int,
        job_id: str = "",
        needles: Sequence[bytes] = (),
    ) -> DeadScan:
        """Look at up to ``max_entries`` entries (or ``max_bytes`` of them) from
        ``position``, oldest first; return those with ``job_id`` (every one for "")."""
        keys = [self.keys.dead, self.keys.dead_trimmed]
        args = [position, trimmed, max_entries, max_bytes, job_id, *needles]
        reply = await _run(self._s.dead_scan, keys, args)
        found = [(int(reply[n]), _bytes(reply[n + 1])) for n in range(3, len(reply), 2)]
        return DeadScan(int(reply[0]), int(reply[1]), int(reply[2]), found)

    async def retry_dead(self, moves: Sequence[tuple[int, bytes, bytes]]) -> int:
        """(end, entry, job): each entry off the list, its job onto the wait list; returns
        how many moved (an entry already gone moves nothing)."""
        if not moves:
            return 0
        args = [part for move in moves for part in move]
        return int(await _run(self._s.retry_dead, [self.keys.dead, self.keys.wait], args))

    async def purge_dead(self, removals: Sequence[tuple[int, bytes]]) -> int:
        """(end, entry): each entry off the list; returns how many were removed."""
        if not removals:
            return 0
        args = [part for removal in removals for part in removal]
        return int(await _run(self._s.purge_dead, [self.keys.dead], args))


def _claim(reply: Sequence[Any]) -> Claim:
    kind = ClaimKind(int(reply[0]))
    if kind is ClaimKind.JOBS:
        return Claim(kind, items=reply[2:], redis_ms=int(reply[1]))
    if kind is ClaimKind.GONE:
        return Claim(kind)
    if kind is ClaimKind.SCHEDULED:
        return Claim(kind, items=reply[3:], wait_ms=int(reply[1]), redis_ms=int(reply[2]))
    hold = _bytes(reply[2]) if kind is ClaimKind.HELD else None
    return Claim(kind, wait_ms=int(reply[1]), hold=hold)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
