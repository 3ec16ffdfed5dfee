"""A handler module with a ``warm`` hook, for tests of warm-up before the first fetch:
``warm`` takes ``WARM_S`` seconds and then sets a flag; each job records (under
``data["record"]``) whether the flag was set when it ran."""

from __future__ import annotations

import asyncio
import json
from typing import Final

from alchemy.queue.job import Job
from tests.support.handlers import test_redis

WARM_S: Final = 1.0
_warmed = False


async def warm() -> None:
    global _warmed
    await asyncio.sleep(WARM_S)
    _warmed = True


async def handle(job: Job) -> None:
    await test_redis().rpush(str(job.data["record"]), json.dumps({"warmed": _warmed}))
