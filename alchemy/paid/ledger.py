"""The ledger of provider calls (``provider_calls``): one row per paid request.

begin      before the request is sent: outcome ``in_flight`` (with a budget reservation:
           :mod:`alchemy.paid.budgets`)
finish     after it: ``ok`` (request id, usage, cost, the reply kept for reuse),
           ``refused``, ``rate_limited``, ``timeout``, ``error``, or ``interrupted``
           (cancelled while waiting for the reply)
interrupt  when a piece is taken over: its earlier owners' rows still ``in_flight``
           become ``interrupted`` (they may have been paid: the ledger never
           under-counts spend)
reply_for  an ``ok`` reply of the piece to the same request that no committed result
           has used yet: reused instead of paying again
consume    in the result's transaction: the piece's replies are used up
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

BEGIN: Final = """
INSERT INTO provider_calls (id, job_id, work_key, queue, brand_id, owner_token, provider,
                            model, fingerprint, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'in_flight')
"""
# BEGIN with the call's reservation (alchemy.paid.budgets): $10 its worst-case cost (NULL:
# no price), $11 the seconds it counts while the call is in flight; the budgets' clock.
BEGIN_RESERVED: Final = """
INSERT INTO provider_calls (id, job_id, work_key, queue, brand_id, owner_token, provider,
                            model, fingerprint, outcome, reserved_usd, reserved_until,
                            started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'in_flight', $10,
        alchemy_now() + $11 * interval '1 second', alchemy_now())
"""
FINISH: Final = """
UPDATE provider_calls
SET outcome = $2, request_id = $3, input_tokens = $4, output_tokens = $5, images = $6,
    cost_usd = $7, reply = $8, error = $9, finished_at = now()
WHERE id = $1
"""
# An upsert, so a reply kept in Redis while PostgreSQL was away can be written later even
# if its in_flight row is missing.
FINISH_LATE: Final = """
INSERT INTO provider_calls AS c (id, job_id, work_key, queue, brand_id, owner_token,
                                 provider, model, fingerprint, outcome, request_id,
                                 input_tokens, output_tokens, images, cost_usd, reply, error,
                                 started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
        coalesce($18, now()), coalesce($18, now()))
ON CONFLICT (id) DO UPDATE
SET outcome = excluded.outcome, request_id = excluded.request_id,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    images = excluded.images, cost_usd = excluded.cost_usd, reply = excluded.reply,
    error = excluded.error, finished_at = excluded.finished_at
"""
REPLY_FOR: Final = """
SELECT id, reply, request_id, input_tokens, output_tokens FROM provider_calls
WHERE work_key = $1 AND fingerprint = $2 AND outcome = 'ok' AND consumed_at IS NULL
  AND reply IS NOT NULL
ORDER BY started_at DESC
LIMIT 1
"""
INTERRUPT: Final = """
UPDATE provider_calls
SET outcome = 'interrupted', finished_at = now(),
    error = 'its runner ended before the reply was recorded (the work was taken over)'
WHERE work_key = $1 AND outcome = 'in_flight' AND owner_token <> $2
"""
SET_ASIDE: Final = """
UPDATE provider_calls SET consumed_at = now(), consumed_by = $3
WHERE work_key = $1 AND owner_token = $2 AND outcome = 'ok' AND consumed_at IS NULL
"""
MAX_ERROR: Final = 500


@dataclass(frozen=True, slots=True)
class CallStart:
    """What is known of a call before it is sent."""

    id: uuid.UUID
    job_id: str
    work_key: str
    queue: str
    brand_id: uuid.UUID | None
    owner_token: str
    provider: str
    model: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended."""

    outcome: str
    request_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost_usd: Decimal | None = None
    reply: dict[str, Any] | None = None
    error: str | None = None
    # None: PostgreSQL's now() when it is written; set for a reply kept in Redis meanwhile
    finished_at: datetime | None = None

    @property
    def paid(self) -> bool:
        """The API answered, so the call was billed."""
        return self.outcome in ("ok", "refused") or self.input_tokens + self.output_tokens > 0


@dataclass(frozen=True, slots=True)
class StoredReply:
    call_id: uuid.UUID
    reply: dict[str, Any]
    request_id: str | None
    input_tokens: int
    output_tokens: int


def call_to_json(start: CallStart, end: CallEnd) -> dict[str, Any]:
    """A call as JSON (for the Redis stash): the two halves, decimals and times as text."""
    begun = {**asdict(start), "id": str(start.id)}
    begun["brand_id"] = str(start.brand_id) if start.brand_id else None
    ended = asdict(end)
    ended["cost_usd"] = None if end.cost_usd is None else str(end.cost_usd)
    ended["finished_at"] = (end.finished_at or datetime.now(UTC)).isoformat()
    return {"start": begun, "end": ended}


def call_from_json(value: dict[str, Any]) -> tuple[CallStart, CallEnd]:
    begun, ended = dict(value["start"]), dict(value["end"])
    begun["id"] = uuid.UUID(begun["id"])
    begun["brand_id"] = uuid.UUID(begun["brand_id"]) if begun["brand_id"] else None
    ended["cost_usd"] = None if ended["cost_usd"] is None else Decimal(ended["cost_usd"])
    ended["finished_at"] = datetime.fromisoformat(ended["finished_at"])
    return CallStart(**begun), CallEnd(**ended)


def start_args(start: CallStart) -> tuple[Any, ...]:
    """$1-$9 of BEGIN and FINISH."""
    return (
        start.id,
        start.job_id,
        start.work_key,
        start.queue,
        start.brand_id,
        start.owner_token,
        start.provider,
        start.model,
        start.fingerprint,
    )


def _end_args(end: CallEnd) -> tuple[Any, ...]:
    """$2-$9 of FINISH, $10-$17 of FINISH_LATE."""
    return (
        end.outcome,
        end.request_id,
        end.input_tokens,
        end.output_tokens,
        end.images,
        end.cost_usd,
        end.reply,
        (end.error or "")[:MAX_ERROR] or None,
    )


class Ledger:
    async def begin(self, executor: Any, start: CallStart) -> None:
        await executor.execute(BEGIN, *start_args(start))

    async def finish(self, executor: Any, start: CallStart, end: CallEnd) -> None:
        """Record how the call ended (its row exists: :meth:`begin` wrote it)."""
        await executor.execute(FINISH, start.id, *_end_args(end))

    async def finish_late(self, executor: Any, start: CallStart, end: CallEnd) -> None:
        """Write a call whole, row or not: one kept in Redis meanwhile (with its own time),
        or the one row of a local provider's call (``finished_at`` None: now)."""
        await executor.execute(FINISH_LATE, *start_args(start), *_end_args(end), end.finished_at)

    async def reply_for(self, executor: Any, work_key: str, fingerprint: str) -> StoredReply | None:
        row = await executor.fetchrow(REPLY_FOR, work_key, fingerprint)
        if row is None:
            return None
        return StoredReply(
            row["id"], row["reply"], row["request_id"], row["input_tokens"], row["output_tokens"]
        )

    async def interrupt(self, executor: Any, work_key: str, owner_token: str) -> int:
        """Mark the rows other owners left ``in_flight`` on ``work_key`` interrupted."""
        status: str = await executor.execute(INTERRUPT, work_key, owner_token)
        return int(status.rsplit(" ", 1)[-1])

    async def set_aside(self, executor: Any, work_key: str, owner_token: str, why: str) -> None:
        """This owner's unused replies are never to be reused (its result was discarded, or
        the work failed for good and a retry by hand should pay for a fresh reply)."""
        await executor.execute(SET_ASIDE, work_key, owner_token, why)
