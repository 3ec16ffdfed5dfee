"""Enqueueing from Python: exactly the LPUSH that docs/protocol.md describes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from redis.asyncio import Redis

from alchemy.queue import scripts
from alchemy.queue.job import encode_job
from alchemy.queue.keys import QueueKeys

ONCE_TTL: Final = 7 * 86_400.0  # seconds a job pushed once is remembered


class Producer:
    def __init__(self, redis: Redis, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix
        self._enqueue_once = redis.register_script(scripts.ENQUEUE_ONCE)

    async def enqueue(self, queue: str, data: Mapping[str, Any], id: str | None = None) -> str:
        """LPUSH one job onto ``queue``'s wait list and return its id.

        ``data`` is the handler's data: a JSON-serializable mapping without the reserved
        fields (``id``, ``enqueued_at``, ``_alchemy``). Without ``id`` a random one is made.
        """
        job_id = id or uuid.uuid4().hex
        payload = encode_job(data, job_id=job_id, enqueued_at=round(time.time() * 1000, 3))
        await self.redis.lpush(QueueKeys(self.prefix, queue).wait, payload)
        return job_id

    async def enqueue_once(
        self, queue: str, data: Mapping[str, Any], id: str, *, remember: float = ONCE_TTL
    ) -> bool:
        """Push the job ``id`` onto ``queue`` unless it was pushed there in the last
        ``remember`` seconds; True when this call pushed it. One atomic step, safe to send
        again after a lost reply: a job is pushed at most once however often it is asked
        for (a follow-up job of work that ran twice, say)."""
        keys = QueueKeys(self.prefix, queue)
        payload = encode_job(data, job_id=id, enqueued_at=round(time.time() * 1000, 3))
        pushed = await self._enqueue_once(
            keys=[keys.enqueued(id), keys.wait], args=[payload, max(1, round(remember * 1000))]
        )
        return bool(pushed)
