"""The two Lua steps of budget holds (issue 13), against the real Redis: counting the jobs a
queue's delayed set holds for each budget, and releasing one brand's onto the wait list."""

from __future__ import annotations

import json
import uuid

from redis.asyncio import Redis

from alchemy.queue.job import ErrorInfo, Meta, encode_envelope
from alchemy.queue.store import QueueStore

BRAND_A, BRAND_B = uuid.uuid4(), uuid.uuid4()


def held(job_id: str, scope: str, *, data: dict[str, str] | None = None) -> bytes:
    message = f"budget_exhausted: {scope} daily budget $1.00 (spent $1.0000, reserved $0)"
    meta = Meta(id=job_id, last_error=ErrorInfo("BudgetExhaustedError", message))
    return encode_envelope(json.dumps({"id": job_id, **(data or {})}).encode(), meta)


async def test_count_and_release_by_scope(redis: Redis, prefix: str) -> None:
    store = QueueStore(redis, prefix=prefix, queue="q", identity="t")
    # A plain retry whose payload names the brand and the error type is not held.
    lookalike = encode_envelope(
        json.dumps({"id": "r", "note": f"BudgetExhaustedError brand {BRAND_A}"}).encode(),
        Meta(id="r", last_error=ErrorInfo("ValueError", "boom")),
    )
    members = {
        held("a1", f"brand {BRAND_A}"): 100,
        held("a2", f"brand {BRAND_A}"): 200,
        held("b1", f"brand {BRAND_B}"): 300,
        held("p1", "provider anthropic"): 400,
        lookalike: 50,
    }
    await redis.zadd(store.keys.delayed, members)
    assert await store.budget_holds() == {
        f"brand:{BRAND_A}": 2,
        f"brand:{BRAND_B}": 1,
        "provider:anthropic": 1,
    }
    assert await store.budget_holds(look_at=2) == {f"brand:{BRAND_A}": 1}  # the 2 soonest

    assert await store.release_budget_holds(f"brand {BRAND_A}") == 2
    waiting = [json.loads(m)["_alchemy"]["id"] for m in await redis.lrange(store.keys.wait, 0, -1)]
    assert sorted(waiting) == ["a1", "a2"]
    assert await redis.zcard(store.keys.delayed) == 3
    assert await store.release_budget_holds(f"brand {BRAND_A}") == 0  # sent twice: nothing
    assert await store.budget_holds() == {f"brand:{BRAND_B}": 1, "provider:anthropic": 1}
