"""Worker identities: at most one live process per identity, everywhere.

A process claims its identity with one atomic step (SET of a claim holding its random
incarnation, only when no other incarnation holds it) and renews the claim with its
heartbeats. Whoever wants to know whether an incarnation still runs (a lease taken by a
runner of it, say) asks :meth:`IdentityClaims.holder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from alchemy.queue import scripts
from alchemy.queue.keys import ended_runs_key, identity_claim_key
from alchemy.queue.topology import RedisClient


@dataclass(frozen=True, slots=True)
class Holder:
    """The process holding an identity, as its claim says."""

    incarnation: str
    host: str
    pid: int | None
    pid_namespace: str  # readlink /proc/self/ns/pid, "" when unknown
    boot_id: str  # /proc/sys/kernel/random/boot_id, "" when unknown
    pid_started: int | None  # field 22 of /proc/PID/stat: tells a reused pid apart
    ttl_ms: int  # left on the claim when it was read

    @classmethod
    def parse(cls, raw: bytes | str, ttl_ms: int) -> Holder:
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {}
        if not isinstance(value, dict):
            value = {}

        def text(key: str) -> str:
            item = value.get(key)
            return item if isinstance(item, str) else ""

        def number(key: str) -> int | None:
            item = value.get(key)
            return item if isinstance(item, int) and not isinstance(item, bool) else None

        return cls(
            incarnation=text("incarnation"),
            host=text("host"),
            pid=number("pid"),
            pid_namespace=text("pid_namespace"),
            boot_id=text("boot_id"),
            pid_started=number("pid_started"),
            ttl_ms=ttl_ms,
        )


class IdentityClaims:
    def __init__(self, redis: RedisClient, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._claim = redis.register_script(scripts.CLAIM_IDENTITY)
        self._renew = redis.register_script(scripts.RENEW_IDENTITY)
        self._release = redis.register_script(scripts.RELEASE_IDENTITY)

    def key(self, identity: str) -> str:
        return identity_claim_key(self.prefix, identity)

    async def claim(
        self, identity: str, value: str, incarnation: str, ttl_ms: int, replaceable: str = ""
    ) -> Holder | None:
        """Claim ``identity`` for ``incarnation``; None when done, else who holds it. A
        holder whose incarnation is ``replaceable`` (known dead) is replaced."""
        reply = await self._claim(
            keys=[self.key(identity)], args=[value, incarnation, ttl_ms, replaceable]
        )
        if int(reply[0]) == 1:
            return None
        return Holder.parse(reply[1], int(reply[2]))

    async def renew(self, identity: str, value: str, incarnation: str, ttl_ms: int) -> bool:
        """False when another incarnation holds the identity now."""
        return bool(await self._renew(keys=[self.key(identity)], args=[value, incarnation, ttl_ms]))

    async def release(self, identity: str, incarnation: str) -> bool:
        return bool(await self._release(keys=[self.key(identity)], args=[incarnation]))

    async def holder(self, identity: str) -> Holder | None:
        """Who holds ``identity`` now (None: nobody: it is not running anywhere)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key(identity))
            pipe.pttl(self.key(identity))
            raw, ttl = await pipe.execute()
        return None if raw is None else Holder.parse(raw, int(ttl))

    async def mark_run_ended(self, identity: str, token: str, ttl: float) -> None:
        """One run of ``identity`` has ended (for whoever waits on what it held); the set
        lives as long as the longest such hold can (``ttl`` seconds from the last mark)."""
        key = ended_runs_key(self.prefix, identity)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, token)
            pipe.pexpire(key, max(1, round(ttl * 1000)))
            await pipe.execute()

    async def run_ended(self, identity: str, token: str) -> bool:
        return bool(await self.redis.sismember(ended_runs_key(self.prefix, identity), token))
