"""Key layout of protocol version 1 (docs/protocol.md). Nothing else builds a key string.

Every key of one queue carries the queue name as a Redis Cluster hash tag, ``{name}``, so
each atomic step of a queue touches a single slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION: Final = 1

KEY_TEMPLATES: Final = {
    "wait": "{prefix}:{{{queue}}}:wait",
    "processing": "{prefix}:{{{queue}}}:processing:{identity}",
    "delayed": "{prefix}:{{{queue}}}:delayed",
    "dead": "{prefix}:{{{queue}}}:dead",
    "dead_trimmed": "{prefix}:{{{queue}}}:dead-trimmed",
    "bucket": "{prefix}:{{{queue}}}:ratelimit",
    "paused_until": "{prefix}:{{{queue}}}:paused-until",
    "paused": "{prefix}:{{{queue}}}:paused",
    "held": "{prefix}:{{{queue}}}:held",
    "consumers": "{prefix}:{{{queue}}}:consumers",
    "heartbeat": "{prefix}:{{{queue}}}:heartbeat:{identity}",
    # Written by alchemy.ops (observers of the engine), never read by the engine itself.
    "events": "{prefix}:{{{queue}}}:events",
    "throughput": "{prefix}:{{{queue}}}:throughput",
    "per_minute": "{prefix}:{{{queue}}}:per-minute",
    "records": "{prefix}:{{{queue}}}:records",
    "records_old": "{prefix}:{{{queue}}}:records:old",
    # Written by a handler's enqueue-once step (Producer.enqueue_once): the job with this
    # id was pushed onto this queue; pushing it again does nothing while the marker lives.
    "enqueued": "{prefix}:{{{queue}}}:enqueued:{job_id}",
}

# Keys of a worker identity rather than of a queue.
IDENTITY_TEMPLATES: Final = {
    # JSON of the live process holding the identity (incarnation, host, pid...), with a
    # TTL renewed with its heartbeats.
    "claim": "{prefix}:identity:{{{identity}}}:claim",
    # Runs of the identity's processes that ended while still holding a piece of paid
    # work's lease (PostgreSQL was away): a set of run tokens, expiring with the leases.
    "ended_runs": "{prefix}:identity:{{{identity}}}:ended-runs",
}


# Keys of a piece of paid work (alchemy.paid), named by its work key.
WORK_TEMPLATES: Final = {
    # Hash of provider call id -> JSON of a paid reply that could not be written to the
    # ledger (PostgreSQL was away), with a TTL of days; the next run of the work writes it.
    "replies": "{prefix}:paid:{{{work_key}}}:replies",
    # Hash of sha256 -> the bytes of a paid image the media store refused, with a TTL of
    # days; the next run of the work stores them instead of paying again.
    "images": "{prefix}:paid:{{{work_key}}}:images",
}


def paid_replies_key(prefix: str, work_key: str) -> str:
    """Where paid replies wait for the ledger while PostgreSQL is away."""
    return WORK_TEMPLATES["replies"].format(prefix=prefix, work_key=work_key)


def paid_images_key(prefix: str, work_key: str) -> str:
    """Where paid images wait for the media store while it refuses writes."""
    return WORK_TEMPLATES["images"].format(prefix=prefix, work_key=work_key)


def ended_runs_key(prefix: str, identity: str) -> str:
    """The set of runs of ``identity`` that ended without giving their lease up."""
    return IDENTITY_TEMPLATES["ended_runs"].format(prefix=prefix, identity=identity)


def identity_claim_key(prefix: str, identity: str) -> str:
    """The key a live process holds while it runs with ``identity``."""
    return IDENTITY_TEMPLATES["claim"].format(prefix=prefix, identity=identity)


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue under one prefix."""

    prefix: str
    queue: str

    def _key(self, name: str, identity: str = "", job_id: str = "") -> str:
        return KEY_TEMPLATES[name].format(
            prefix=self.prefix, queue=self.queue, identity=identity, job_id=job_id
        )

    @property
    def wait(self) -> str:
        return self._key("wait")

    @property
    def delayed(self) -> str:
        return self._key("delayed")

    @property
    def dead(self) -> str:
        return self._key("dead")

    @property
    def dead_trimmed(self) -> str:
        """Counter of dead-letter entries dropped (the oldest) to keep the list at its cap."""
        return self._key("dead_trimmed")

    @property
    def bucket(self) -> str:
        return self._key("bucket")

    @property
    def paused_until(self) -> str:
        return self._key("paused_until")

    @property
    def paused(self) -> str:
        return self._key("paused")

    @property
    def held(self) -> str:
        """JSON of the dependency holding the queue while it is down, with a TTL."""
        return self._key("held")

    @property
    def consumers(self) -> str:
        return self._key("consumers")

    @property
    def events(self) -> str:
        """Stream of job transitions (docs/protocol.md, "The events stream")."""
        return self._key("events")

    @property
    def throughput(self) -> str:
        """Hash of per-second completed/failed counts for the admin API."""
        return self._key("throughput")

    @property
    def per_minute(self) -> str:
        """Hash of per-minute completed/failed counts (the last hour) for the dashboard."""
        return self._key("per_minute")

    @property
    def records(self) -> str:
        """Hash of job id -> JSON record of its last transition (the current generation)."""
        return self._key("records")

    @property
    def records_old(self) -> str:
        """The previous generation of ``records``, read until it is replaced or expires."""
        return self._key("records_old")

    def processing(self, identity: str) -> str:
        return self._key("processing", identity)

    def heartbeat(self, identity: str) -> str:
        return self._key("heartbeat", identity)

    def enqueued(self, job_id: str) -> str:
        """The marker of a job pushed once onto this queue (:meth:`Producer.enqueue_once`)."""
        return self._key("enqueued", job_id=job_id)
