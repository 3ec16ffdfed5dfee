"""The dashboard's overview shows a queue's jobs held for a budget (``budget_exhausted``) and
a provider's pause for its own spend limit (issue 13), in a real headless Chromium served by
a real worker process."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from selenium.webdriver.common.by import By

from alchemy.queue.job import ErrorInfo, Meta, encode_envelope
from alchemy.queue.keys import QueueKeys
from tests.browser.conftest import screenshot
from tests.browser.test_dashboard import Driver, start, until
from tests.conftest import WorkerProcess
from tests.ports import free_port


def badges(driver: Driver, queue: str) -> list[str]:
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{queue}"]')
    return [b.text for b in row.find_elements(By.CSS_SELECTOR, ".badge")]


async def test_budget_holds_and_a_provider_pause_show_on_the_overview(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess], browser: Any
) -> None:
    brand = uuid.uuid4()
    keys = QueueKeys(prefix, "q")
    for n in range(2):  # two jobs held for the brand's budget, as a worker leaves them
        message = f"budget_exhausted: brand {brand} daily budget $1.00 (spent $1.0000, ...)"
        meta = Meta(id=f"h-{n}", last_error=ErrorInfo("BudgetExhaustedError", message))
        envelope = encode_envelope(json.dumps({"id": f"h-{n}"}).encode(), meta)
        await redis.zadd(keys.delayed, {envelope: 4_000_000_000_000})
    pause = {"dependency": "provider:openai", "reason": "spend limit: openai 429 ...", "by": "w"}
    await redis.set(keys.held, orjson.dumps(pause), px=60_000)
    port = free_port()
    await start(spawn_worker, port)
    await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/")
    await until(browser, lambda d: "2 held: budget_exhausted" in badges(d, "q"))
    assert "held: openai spend limit" in badges(browser, "q")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="q"]')
    held = row.find_element(By.CSS_SELECTOR, '[data-badge="budget-exhausted"]')
    assert held.get_attribute("title") == f"brand:{brand}: 2"
    screenshot(browser, "dashboard-budget-held")
