"""Leases on pieces of paid work, in PostgreSQL (``work_leases``, PostgreSQL's clock).

    a runner asks for the lease of a work key
    ├── nobody holds it, it is released, expired, or ours     claimed (one statement)
    ├── held by another owner that is known dead              taken over at once
    │   (its identity now runs as another incarnation: the
    │   process restarted; or it is a run of this very
    │   process that has ended)
    └── held by another owner that may be alive               DeferredError for the lease's
        (its identity's claim is absent, or still names its   remaining time, or a tenth of
        incarnation: frozen, or Redis lost the key)           the lease (15-60 s) if less:
                                                              no attempt spent, the queue
                                                              goes on

The commit of a result is fenced: in the result's transaction, one ``UPDATE`` releases the
lease only when the same owner token still holds it (the row stays locked until the commit,
so a claimer waits and then sees the result); otherwise :class:`LeaseLostError` and the
transaction rolls back. A lease expires after ``lease_seconds``: comfortably more than the
worst a piece's calls can take, so an owner that is merely slow keeps it, and a dead one
never blocks the work for longer than that.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import structlog

from alchemy.config import MediaConfig, ProvidersConfig
from alchemy.errors import AlchemyError, DeferredError
from alchemy.paid.observe import PaidObserver
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.job import Job

log = structlog.get_logger("alchemy.paid.leases")

LEASE_MARGIN: Final = 30.0  # seconds on top of the worst-case call time
SDK_BACKOFF_MAX: Final = 8.0  # the SDKs' longest wait between two of their own retries
DEFER_MIN: Final = 1.0  # seconds: a held lease defers the job at least this long ...
# ... and at most a tenth of the lease (within these bounds), so a holder found dead later
# (its identity restarts) is noticed soon, and a frozen one costs about ten deferrals.
RECHECK_MIN: Final = 15.0
RECHECK_MAX: Final = 60.0
CLAIM_TRIES: Final = 5

CLAIM: Final = """
WITH before AS (
    SELECT owner_token, expires_at <= now() AS expired FROM work_leases WHERE work_key = $1
)
INSERT INTO work_leases AS l (work_key, owner_token, owner_identity, owner_incarnation,
                              job_id, attempt, acquired_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now(), now() + $7 * interval '1 second')
ON CONFLICT (work_key) DO UPDATE
SET owner_token = excluded.owner_token, owner_identity = excluded.owner_identity,
    owner_incarnation = excluded.owner_incarnation, job_id = excluded.job_id,
    attempt = excluded.attempt, acquired_at = now(), expires_at = excluded.expires_at,
    released_at = NULL,
    takeovers = l.takeovers
        + CASE WHEN l.owner_token <> excluded.owner_token THEN 1 ELSE 0 END
WHERE l.owner_token IS NULL OR l.owner_token = excluded.owner_token
   OR l.expires_at <= now() OR l.owner_token = $8
RETURNING (xmax = 0) AS fresh, (SELECT owner_token FROM before) AS previous,
          (SELECT expired FROM before) AS expired
"""
HOLDER: Final = """
SELECT owner_token, owner_identity, owner_incarnation, job_id,
       extract(epoch FROM expires_at - now())::float8 AS left_s
FROM work_leases WHERE work_key = $1
"""
RELEASE: Final = """
UPDATE work_leases SET owner_token = NULL, released_at = now(), expires_at = now()
WHERE work_key = $1 AND owner_token = $2
RETURNING 1
"""


def worst_call_seconds(providers: ProvidersConfig, media: MediaConfig) -> float:
    """The longest a piece's provider calls can take: a structured reply may need a repair
    round (two calls), an image its download; each call up to ``max_retries`` SDK retries."""
    one = (providers.max_retries + 1) * providers.timeout + providers.max_retries * SDK_BACKOFF_MAX
    return max(2 * one, one + media.download_timeout)


def lease_seconds(providers: ProvidersConfig, media: MediaConfig) -> float:
    """``[providers] work_lease``, or (0) the worst-case call time plus a margin."""
    return providers.work_lease or worst_call_seconds(providers, media) + LEASE_MARGIN


class LeaseLostError(AlchemyError):
    """The result could not be committed: another owner took the lease over (it expired
    while this runner was frozen or slow). The result is discarded; that owner commits."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lease: one run of one attempt of a job."""

    token: str
    identity: str
    incarnation: str
    job_id: str
    attempt: int
    queue: str

    @classmethod
    def of(cls, job: Job) -> Owner:
        runner = job.runner
        # Outside the engine (a test calling a handler) there is no runner: a token of its own.
        run = runner.token if runner.incarnation else f"//{uuid.uuid4().hex}"
        return cls(
            token=f"{job.id}|{job.attempt}|{run}",
            identity=runner.identity,
            incarnation=runner.incarnation,
            job_id=job.id,
            attempt=job.attempt,
            queue=job.queue,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    work_key: str
    owner: Owner
    fresh: bool  # the first lease ever taken on this key: nothing to recover or reuse


class Leases:
    """The leases one process takes. ``_active`` holds the tokens of this process's runs
    that hold a lease now, which is how a run tells a live sibling from an ended one."""

    def __init__(
        self, claims: IdentityClaims, seconds: float, observer: PaidObserver | None = None
    ) -> None:
        self.claims = claims
        self.seconds = seconds
        self.recheck = min(RECHECK_MAX, max(RECHECK_MIN, seconds / 10))
        self.observer = observer
        self._active: set[str] = set()

    async def acquire(self, pool: Any, work_key: str, owner: Owner) -> Lease:
        """The lease of ``work_key`` for ``owner``, or :class:`DeferredError`."""
        takeover, why = "", ""
        for _ in range(CLAIM_TRIES):
            row = await pool.fetchrow(
                CLAIM,
                work_key,
                owner.token,
                owner.identity,
                owner.incarnation,
                owner.job_id,
                owner.attempt,
                self.seconds,
                takeover,
            )
            if row is not None:
                self._active.add(owner.token)
                previous = row["previous"]
                if previous is not None and previous != owner.token:
                    self._taken_over(work_key, owner, previous, why or "expired")
                return Lease(work_key, owner, fresh=bool(row["fresh"]))
            held = await pool.fetchrow(HOLDER, work_key)
            if held is None or held["owner_token"] is None or held["left_s"] <= 0:
                continue  # released or expired meanwhile: claim again
            why = await self._why_dead(held, owner)
            if not why:
                raise self._defer(work_key, owner, held)
            takeover = held["owner_token"]
        raise DeferredError(DEFER_MIN, f"the lease of {work_key} is contended")

    async def _why_dead(self, held: Any, owner: Owner) -> str:
        """Why the holder is known dead ("" when it may be alive)."""
        if held["owner_incarnation"] == owner.incarnation:
            # A run of this very process: alive while it holds the lease here.
            return "" if held["owner_token"] in self._active else "ended_run"
        try:
            holder = await self.claims.holder(held["owner_identity"] or "")
        except Exception as exc:  # Redis away: nothing known, so it may be alive
            log.warning("lease_holder_unknown", error=f"{type(exc).__name__}: {exc}")
            return ""
        if holder is not None and holder.incarnation != held["owner_incarnation"]:
            return "owner_restarted"
        return ""

    def _defer(self, work_key: str, owner: Owner, held: Any) -> DeferredError:
        left = float(held["left_s"])
        delay = min(self.recheck, max(DEFER_MIN, left))
        log.info(
            "lease_held",
            work_key=work_key,
            holder_job_id=held["job_id"],
            holder=held["owner_identity"],
            lease_left_s=round(left, 3),
            retry_in_s=round(delay, 3),
        )
        self._report(owner.queue, "deferred")
        return DeferredError(
            delay,
            f"{work_key} is being worked on by job {held['job_id']} on"
            f" {held['owner_identity'] or 'this process'} (lease ends in {left:.1f}s)",
        )

    def _taken_over(self, work_key: str, owner: Owner, previous: str, why: str) -> None:
        """Logged as a warning: a takeover may pay for the piece once more (a call the
        previous owner had in flight), which is the bound a lease sets."""
        log.warning("lease_taken_over", work_key=work_key, previous_owner=previous, why=why)
        self._report(owner.queue, "taken_over")

    async def release(self, executor: Any, lease: Lease) -> None:
        """Give the lease up (the work is not done: a failure, a deferral)."""
        await executor.execute(RELEASE, lease.work_key, lease.owner.token)

    async def fence(self, conn: Any, lease: Lease) -> None:
        """In the result's transaction: release the lease if we still hold it (the row
        stays locked until the commit), else :class:`LeaseLostError`."""
        if await conn.fetchval(RELEASE, lease.work_key, lease.owner.token) is None:
            await self.lost(conn, lease)

    async def lost(self, conn: Any, lease: Lease) -> None:
        """The fence found another owner: log who, count it, raise :class:`LeaseLostError`."""
        holder = await conn.fetchrow(HOLDER, lease.work_key)
        log.warning(
            "lease_lost",
            work_key=lease.work_key,
            holder_job_id=holder["job_id"] if holder else None,
            holder=holder["owner_identity"] if holder else None,
            outcome="result discarded: the owner that took the lease over commits its own",
        )
        self._report(lease.owner.queue, "lost")
        raise LeaseLostError(f"the lease of {lease.work_key} was taken over; result discarded")

    def forget(self, owner: Owner) -> None:
        self._active.discard(owner.token)

    def _report(self, queue: str, event: str) -> None:
        if self.observer is not None:
            self.observer.on_lease(queue, event)
