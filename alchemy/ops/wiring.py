"""What ``python -m alchemy run`` adds around the engine for operators: metrics, the events
stream, job records and the in-process event hooks, each from its own section of the
configuration. (The HTTP listener, a face of the process, is added by the command line.)
The events stream and the records are written by one writer (:mod:`alchemy.ops.transitions`).

Metrics are collected only where something can read them (the listener's ``/metrics``):
a process without a listener imports no Prometheus client and counts nothing per job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alchemy.config import Config
from alchemy.ops.events import EventHooks, StreamEntries, hooks
from alchemy.ops.records import RecordEntries
from alchemy.ops.transitions import TransitionWriter
from alchemy.paid.observe import PaidObserver
from alchemy.worker.observer import JobObserver
from alchemy.worker.supervisor import Extension

if TYPE_CHECKING:
    from alchemy.ops.metrics import Metrics


@dataclass
class Operations:
    metrics: Metrics | None  # None: nothing would read them (no listener)
    observers: list[JobObserver] = field(default_factory=list)
    extensions: list[Extension] = field(default_factory=list)
    paid_observer: PaidObserver | None = None  # hears of provider calls and leases


def operations(
    config: Config,
    *,
    event_hooks: EventHooks = hooks,
    install_metrics: bool = True,
    collect_metrics: bool = True,
) -> Operations:
    """Build the observers and extensions for one worker process.

    With ``collect_metrics`` the metrics count every job, and with ``install_metrics`` they
    also hear of the services' provider calls and leases (``paid_observer``)."""
    ops = Operations(None, observers=[event_hooks], extensions=[event_hooks])
    if collect_metrics:
        from alchemy.ops.metrics import Metrics  # the Prometheus client, only where it serves

        ops.metrics = metrics = Metrics.for_process()
        metrics.providers_in_use(config.providers.text, config.providers.image)
        ops.observers.insert(0, metrics)
        ops.paid_observer = metrics if install_metrics else None
    # The events stream and the records share one writer: one Lua call per queue and batch.
    entries = records = None
    if config.events.enabled:
        entries = StreamEntries(config.events.max_length)
    if config.records.enabled:
        records = RecordEntries(config.records.max_per_queue, config.records.ttl)
    if entries is not None or records is not None:
        writer = TransitionWriter(config.redis.prefix, entries=entries, records=records)
        ops.observers.append(writer)
        ops.extensions.append(writer)
    return ops
