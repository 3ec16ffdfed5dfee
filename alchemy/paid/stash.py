"""Paid replies waiting in Redis for the ledger while PostgreSQL is away.

When the ledger cannot record a reply that was paid for, the reply is kept in the hash
``PREFIX:paid:{WORK_KEY}:replies`` (call id -> JSON of the call, docs/protocol.md) for
``STASH_TTL`` and the job is held (``DependencyUnavailableError("postgres")``); the next
run of the piece writes it to the ledger first, and from there it is reused like any other
stored reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final

from alchemy.paid.ledger import CallEnd, CallStart, call_from_json, call_to_json
from alchemy.queue.keys import paid_replies_key
from alchemy.queue.topology import RedisClient

STASH_TTL: Final = 7 * 86_400.0  # seconds


class ReplyStash:
    def __init__(self, redis: RedisClient, *, prefix: str, ttl: float = STASH_TTL) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = round(ttl * 1000)

    async def keep(self, start: CallStart, end: CallEnd) -> None:
        key = paid_replies_key(self.prefix, start.work_key)
        value = json.dumps(call_to_json(start, end), ensure_ascii=False)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, str(start.id), value)
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()

    async def take(self, work_key: str) -> dict[str, tuple[CallStart, CallEnd]]:
        """Every call kept for ``work_key`` (left in Redis until :meth:`drop`)."""
        raw = await self.redis.hgetall(paid_replies_key(self.prefix, work_key))
        return {
            (field.decode() if isinstance(field, bytes) else str(field)): call_from_json(
                json.loads(value)
            )
            for field, value in raw.items()
        }

    async def drop(self, work_key: str, call_ids: Iterable[str]) -> None:
        ids = list(call_ids)
        if ids:
            await self.redis.hdel(paid_replies_key(self.prefix, work_key), *ids)
