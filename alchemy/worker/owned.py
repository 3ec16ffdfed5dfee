"""Which items of a processing list this process is working on right now.

The reconcile loop returns items that sit in our processing list with nobody here owning
them (a BRPOPLPUSH reply lost with its connection); everything else is owned from the
moment it is taken until its last Redis step is done."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class Owned:
    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()

    def take(self, item: bytes) -> None:
        self.counts[item] += 1

    def release(self, items: Iterable[bytes]) -> None:
        counts = self.counts
        for item in items:
            left = counts[item] - 1
            if left > 0:
                counts[item] = left
            else:
                del counts[item]
