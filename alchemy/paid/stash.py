"""Paid replies waiting in Redis for the ledger while PostgreSQL is away, and paid images
waiting for the media store while it refuses writes.

When the ledger cannot record a reply that was paid for, the reply is kept in the hash
``PREFIX:paid:{WORK_KEY}:replies`` (call id -> JSON of the call, docs/protocol.md) for
``STASH_TTL`` and the job is held (``DependencyUnavailableError("postgres")``); the next
run of the piece writes it to the ledger first, and from there it is reused like any other
stored reply.

When the media store refuses a paid image, its bytes are kept in the hash
``PREFIX:paid:{WORK_KEY}:images`` (sha256 -> bytes) for ``STASH_TTL``; the ledger records the
reply with ``kept_in_redis`` instead of a place, and the next run stores the bytes from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final, cast

from alchemy.paid.ledger import CallEnd, CallStart, call_from_json, call_to_json
from alchemy.queue.keys import paid_images_key, paid_replies_key
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

    async def keep_image(self, work_key: str, sha256: str, data: bytes) -> None:
        key = paid_images_key(self.prefix, work_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, sha256, data)
            pipe.pexpire(key, self.ttl_ms)
            await pipe.execute()

    async def image(self, work_key: str, sha256: str) -> bytes | None:
        """The bytes kept for ``work_key`` under ``sha256``; None when there are none."""
        data = await self.redis.hget(paid_images_key(self.prefix, work_key), sha256)
        return cast(bytes | None, data)  # alchemy's clients never decode replies
