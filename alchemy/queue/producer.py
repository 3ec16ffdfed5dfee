"""Enqueueing from Python: exactly the LPUSH that docs/protocol.md describes, optionally
followed by a WAIT for replicas (docs/protocol.md, "Surviving a failover")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterPipeline

from alchemy.errors import NotReplicatedError
from alchemy.queue import scripts
from alchemy.queue.job import encode_job
from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient, same_node

REDIRECTED_TRIES: Final = 3  # pushes re-sent after a Cluster said the slot moved

ONCE_TTL: Final = 7 * 86_400.0  # seconds a job pushed once is remembered


class Producer:
    def __init__(self, redis: RedisClient, *, prefix: str = "alchemy") -> None:
        self.redis = redis
        self.prefix = prefix
        self._enqueue_once = redis.register_script(scripts.ENQUEUE_ONCE)

    async def enqueue(
        self,
        queue: str,
        data: Mapping[str, Any],
        id: str | None = None,
        *,
        replicas: int = 0,
        replication_timeout: float = 0.2,
    ) -> str:
        """LPUSH one job onto ``queue``'s wait list and return its id.

        ``data`` is the handler's data: a JSON-serializable mapping without the reserved
        fields (``id``, ``enqueued_at``, ``_alchemy``). Without ``id`` a random one is made.

        ``replicas`` > 0: the push counts only once that many replicas of the queue's master
        have it (``WAIT replicas timeout`` on the same connection, right after the LPUSH),
        so a failover cannot lose it. Otherwise, after ``replication_timeout`` seconds,
        :class:`~alchemy.errors.NotReplicatedError`: the job was pushed but may be lost,
        so push it again with the same id.
        """
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if replication_timeout <= 0:
            raise ValueError("replication_timeout must be > 0 (WAIT 0 would wait forever)")
        job_id = id or uuid.uuid4().hex
        payload = encode_job(data, job_id=job_id, enqueued_at=round(time.time() * 1000, 3))
        key = QueueKeys(self.prefix, queue).wait
        if not replicas:
            await self.redis.lpush(key, payload)
            return job_id
        wait_ms = max(1, round(replication_timeout * 1000))
        acknowledged = await self._push_and_wait(key, payload, replicas, wait_ms)
        if acknowledged < replicas:
            raise NotReplicatedError(
                job_id, wanted=replicas, acknowledged=acknowledged, timeout=replication_timeout
            )
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

    async def _push_and_wait(self, key: str, payload: bytes, replicas: int, wait_ms: int) -> int:
        """LPUSH and WAIT in one pipeline, on one connection to the key's node; how many
        replicas acknowledged the push."""
        for _ in range(REDIRECTED_TRIES):
            node = await same_node(self.redis, key)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(key, payload)
                pipe.execute_command("WAIT", replicas, wait_ms, **node)
                try:
                    if isinstance(pipe, ClusterPipeline):
                        # A redirected LPUSH would be re-sent alone, to another node than
                        # the WAIT's: a redirection is raised instead, and handled here.
                        replies = await pipe.execute(allow_redirections=False)
                    else:
                        replies = await pipe.execute()
                except (redis_errors.MovedError, redis_errors.AskError):
                    # Nothing was pushed. A plain read follows the redirection, which
                    # teaches the client where the slot is now; then push again.
                    await self.redis.exists(key)
                    continue
            return int(replies[1])
        raise redis_errors.TryAgainError(f"the slot of {key} kept moving; push again")
