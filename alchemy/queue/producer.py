"""Enqueueing from Python: exactly the LPUSH that docs/protocol.md describes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from alchemy.queue.job import encode_job
from alchemy.queue.keys import QueueKeys


class Producer:
    def __init__(self, redis: Redis, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix

    async def enqueue(self, queue: str, data: Mapping[str, Any], id: str | None = None) -> str:
        """LPUSH one job onto ``queue``'s wait list and return its id.

        ``data`` is the handler's data: a JSON-serializable mapping without the reserved
        fields (``id``, ``enqueued_at``, ``_alchemy``). Without ``id`` a random one is made.
        """
        job_id = id or uuid.uuid4().hex
        payload = encode_job(data, job_id=job_id, enqueued_at=round(time.time() * 1000, 3))
        await self.redis.lpush(QueueKeys(self.prefix, queue).wait, payload)
        return job_id
