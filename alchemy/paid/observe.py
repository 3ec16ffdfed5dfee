"""What the paid-work path reports to the process's operators (the Prometheus metrics, in
``alchemy run``), without importing them: a :class:`PaidObserver` is set on the services
at assembly; without one nothing is reported."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Protocol

OUTCOMES: Final = ("ok", "refused", "rate_limited", "timeout", "error", "interrupted")
LEASE_EVENTS: Final = ("taken_over", "deferred", "lost")


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One provider call as the ledger recorded it when it ended."""

    provider: str
    model: str
    outcome: str  # one of OUTCOMES
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost_usd: Decimal | None = None  # None: the model has no price


class PaidObserver(Protocol):
    def on_provider_call(self, call: ProviderCall) -> None:
        """A provider call ended (quick: it runs on the job's path)."""

    def on_lease(self, queue: str, event: str) -> None:
        """A lease was ``taken_over``, a runner ``deferred`` to its holder, or a result
        was fenced out because the lease was ``lost``."""
