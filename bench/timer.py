"""The machine's own floor for pickup latency: how late a process wakes from a sleep as
long as the gap between two jobs at the pickup line's rate. No Redis, no asyncio: if a
bare ``time.sleep`` wakes more than 1 ms late at the 99th percentile, no consumer on this
machine can pick up at p99 ≤ 1 ms while it lasts.

Run as its own process (``python -m bench.timer INTERVAL_S SECONDS``), like the consumers it
stands beside; prints one JSON line: ``{"late_ms": [...]}``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path


def wake_lateness(interval_s: float, seconds: float) -> list[float]:
    """Sleep ``interval_s`` again and again for ``seconds``; how late (ms) each wake was."""
    late: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.monotonic()
        time.sleep(interval_s)
        late.append((time.monotonic() - began - interval_s) * 1000)
    return late


async def measure(interval_s: float, seconds: float, cwd: Path) -> list[float]:
    """``wake_lateness`` in a process of its own."""
    args = [sys.executable, "-m", "bench.timer", repr(interval_s), repr(seconds)]
    proc = await asyncio.to_thread(
        subprocess.run, args, cwd=cwd, capture_output=True, text=True, timeout=seconds + 30
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the timer probe exited {proc.returncode}: {proc.stderr[-500:]}")
    late: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])["late_ms"]
    return late


def main(argv: list[str]) -> int:
    interval_s, seconds = (float(a) for a in argv)
    print(json.dumps({"late_ms": wake_lateness(interval_s, seconds)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
