"""What the dashboard shows, as JSON: the overview of every queue and process (built from
one cached :class:`~alchemy.http.overview.Overview`, so any number of pages cost Redis one
read a second), and dead-letter entries with their job cut to a preview."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from alchemy.config import QueueConfig
from alchemy.http.deps import Access, Deps, needs_token
from alchemy.http.overview import Overview
from alchemy.queue.admin import ConsumerStatus, QueueStatus
from alchemy.queue.browse import PerMinute

FULL_JOB_CHARS: Final = 65_536  # a job shown whole up to this; beyond, on demand


def _rate(queue: QueueConfig | None) -> dict[str, Any] | None:
    if queue is None or not queue.rate_limit:
        return None
    return {"limit": queue.rate_limit, "period_s": queue.rate_period, "burst": queue.rate_burst}


def _minutes(counts: PerMinute | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    return {"start_ms": counts.start_ms, "completed": counts.completed, "failed": counts.failed}


def _queue(status: QueueStatus, overview: Overview, config: QueueConfig | None) -> dict[str, Any]:
    name = status.queue
    return {
        "queue": name,
        "wait": status.wait,
        "processing": status.processing,
        "delayed": status.delayed,
        "dead": status.dead,
        "dead_trimmed": status.dead_trimmed,
        "paused": status.paused,
        "paused_for_ms": status.paused_for_ms,
        "held": status.held,
        "budget_held": status.budget_held,
        "oldest_wait_s": overview.oldest_wait_s.get(name),
        "serving": sum(c.alive for c in status.consumers),
        "concurrency": None if config is None else config.concurrency,
        "rate": _rate(config),
        "per_minute": _minutes(overview.per_minute.get(name)),
    }


def _process(identity: str, seen: list[tuple[str, ConsumerStatus]], now_ms: int) -> dict[str, Any]:
    beats = [c.heartbeat for _, c in seen if c.heartbeat]
    beat: Mapping[str, Any] = beats[0] if beats else {}
    started = beat.get("started_ms")
    ages = [c.heartbeat_age_s for _, c in seen if c.heartbeat_age_s is not None]
    return {
        "identity": identity,
        "host": beat.get("host"),
        "pid": beat.get("pid"),
        "alive": any(c.alive for _, c in seen),
        "heartbeat_age_s": min(ages) if ages else None,
        "in_flight": sum(c.processing for _, c in seen),
        "uptime_s": round((now_ms - started) / 1000, 1) if isinstance(started, int) else None,
        "queues": sorted(queue for queue, _ in seen),
    }


def snapshot(overview: Overview, deps: Deps) -> dict[str, Any]:
    """The dashboard's overview: queues in configuration order, then every process seen
    serving any of them (a process serving three queues is one row), and who may do what
    here (the page says so; the server enforces it)."""
    config = deps.config
    configured = {q.name: q for q in config.queues}
    queues = [
        _queue(status, overview, configured.get(name)) for name, status in overview.statuses.items()
    ]
    by_identity: dict[str, list[tuple[str, ConsumerStatus]]] = {}
    for name, status in overview.statuses.items():
        for consumer in status.consumers:
            by_identity.setdefault(consumer.identity, []).append((name, consumer))
    now_ms = int(time.time() * 1000)
    processes = [_process(i, seen, now_ms) for i, seen in sorted(by_identity.items())]
    token_set = bool(config.http.admin_token)
    loopback = deps.loopback_only
    access = {
        "token_configured": token_set,
        "job_data_needs_token": needs_token(
            Access.JOB_DATA, token_set=token_set, loopback_only=loopback
        ),
    }
    return {
        "listener": deps.identity,
        "now_ms": now_ms,
        "access": access,
        "queues": queues,
        "processes": processes,
    }


def preview_entry(fields: Mapping[str, Any], chars: int) -> dict[str, Any]:
    """A dead-letter entry with its ``job`` (or ``job_b64``) cut to ``chars`` characters;
    ``job_chars`` says how long it was when it was cut."""
    entry = dict(fields)
    for key in ("job", "job_b64"):
        value = entry.get(key)
        if isinstance(value, str) and len(value) > chars:
            entry[key] = value[:chars]
            entry["job_chars"] = len(value)
            entry["job_cut"] = True
    return entry
