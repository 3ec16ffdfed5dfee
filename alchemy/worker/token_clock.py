"""When a rate-limit token is due, on this process's clock.

The claim script takes tokens on Redis's clock and says when (``Claim.redis_ms``). A job
must start when its token is due, not later: a start that comes late (the process was
frozen, starved of CPU, or read the reply late) lands after others used the tokens that
follow, and a window of one period then holds more starts than the limit. The consumer asks
this clock how late a start is, and gives the token up for a new one when it is too late.

Redis's clock and ours need not agree (another host), so the clock learns the offset: each
claim's reply, read at local time ``t``, says Redis's time ``r`` when it ran; ``t - r`` is
the offset plus however long the reply took to be read. The smallest of the recent ones is
the offset with the least delay in it. A reply read late therefore shows up as a late
start, which is what it is.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

SAMPLES: Final = 32  # recent replies the offset is the smallest of (a clock change ages out)


class TokenClock:
    def __init__(self) -> None:
        self._offsets: deque[float] = deque(maxlen=SAMPLES)

    def due_ms(self, redis_ms: int, wait_ms: int, read_ms: float) -> float:
        """The local wall time (ms) at which a token taken at Redis's ``redis_ms``, due
        ``wait_ms`` later, falls due; ``read_ms``: when the claim's reply was read here.
        (Rate-limited queues claim a few times a second: a min() over 32 is nothing.)"""
        self._offsets.append(read_ms - redis_ms)
        return redis_ms + wait_ms + min(self._offsets)

    @staticmethod
    def late_ms(due_ms: float) -> float:
        """How much later than ``due_ms`` (local wall time, ms) it is now."""
        return time.time() * 1000 - due_ms
