"""Retry delay as a pure function of the attempt number."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    multiplier: float,
    maximum: float,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the attempt after ``attempt`` (1-based) failed.

    Exponential: ``initial * multiplier ** (attempt - 1)``, capped at ``maximum``, then
    reduced by a random fraction of at most ``jitter`` so that jobs which failed together
    do not all come back together.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    exponent = min(attempt - 1, 64)
    base = min(maximum, initial * multiplier**exponent)
    spread = (rng or random).random() * jitter
    return base * (1.0 - spread)
