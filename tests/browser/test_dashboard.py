"""The dashboard in a real headless Chromium, served by a real worker process."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.browser.conftest import screenshot
from tests.conftest import WorkerProcess, wait_exited, wait_for, wait_started
from tests.ports import free_port

TOKEN = "browser-token-0123456789"
HANDLER = "tests.support.handlers:reporting"
HOSTILE = "<img src=x onerror=alert(1)>"
Driver = Any


def queues() -> dict[str, Any]:
    return {
        "q": {"handler": HANDLER, "max_attempts": 1, "concurrency": 4},
        "idle": {"handler": HANDLER, "enabled": False},  # configured, served by nobody
    }


async def start(
    spawn_worker: Callable[..., WorkerProcess], port: int, path_prefix: str = ""
) -> WorkerProcess:
    http = {"port": port, "admin_token": TOKEN, "check_database": False}
    worker = spawn_worker(queues(), http={**http, "path_prefix": path_prefix})
    await wait_started(worker)

    async def listening() -> bool:
        url = f"http://127.0.0.1:{port}{path_prefix}/healthz"
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(listening, within=10)
    return worker


async def add_dead(
    redis: Redis, prefix: str, job_id: str, *, message: str = "told to fail", data: Any = None
) -> None:
    job = json.dumps({"id": job_id, **(data or {"n": 1})}).encode()
    entry = encode_dead_entry(
        queue="q",
        raw_job=job,
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo("ValueError", message),
        meta=Meta(id=job_id, attempt=1),
        dead_at_ms=int(time.time() * 1000),
    )
    await redis.lpush(QueueKeys(prefix, "q").dead, entry)


async def seed_last_hour(redis: Redis, prefix: str) -> None:
    """Per-minute counts of an earlier hour, as workers write them (protocol.md: the
    per-minute hash), so the chart has something to draw; the current minute is left to
    the test."""
    now, _ = await redis.time()
    minute = int(now) // 60
    counts = {}
    for back in range(1, 60):
        counts[f"{minute - back}:c"] = 40 + (back * 37) % 60
        if back % 7 == 0:
            counts[f"{minute - back}:f"] = back % 5 + 1
    await redis.hset(QueueKeys(prefix, "q").per_minute, mapping=counts)


async def until(driver: Driver, check: Callable[[Driver], Any], within: float = 10.0) -> Any:
    """Poll ``check`` in a thread (selenium blocks) until it returns something truthy. The
    page redraws its tables as updates arrive: an element gone meanwhile is looked up again."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, within, poll_frequency=0.05, ignored_exceptions=ignored)
    try:
        return await asyncio.to_thread(wait.until, check)
    except TimeoutException:
        shot = screenshot(driver, f"timeout-{int(time.time())}")
        logs = driver.get_log("browser")
        message = f"not within {within}s; page saved as {shot}; console: {logs}"
        raise AssertionError(message) from None


def cell(driver: Driver, queue: str, count: str) -> str:
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{queue}"]')
    return str(row.find_element(By.CSS_SELECTOR, f'td[data-count="{count}"]').text)


def completed_in_hour(driver: Driver, queue: str) -> int:
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-queue="{queue}"]')
    return int(row.find_element(By.CSS_SELECTOR, ".hour").get_attribute("data-completed"))


async def use_token(driver: Driver) -> None:
    await asyncio.to_thread(driver.find_element(By.ID, "token").send_keys, TOKEN)
    await asyncio.to_thread(driver.find_element(By.ID, "token-save").click)


def no_dialog_opened(driver: Driver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


async def test_counts_live_completion_and_progress(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess], browser: Driver
) -> None:
    port = free_port()
    producer = Producer(redis, prefix=prefix)
    for n in range(3):
        await producer.enqueue("idle", {"n": n}, id=f"idle-{n}")
    await add_dead(redis, prefix, "d-1")
    await add_dead(redis, prefix, "d-2")
    await seed_last_hour(redis, prefix)
    await start(spawn_worker, port)
    base = f"http://127.0.0.1:{port}/"
    await asyncio.to_thread(browser.get, base)
    await until(browser, lambda d: d.find_element(By.ID, "conn").text == "live")

    for queue in ("q", "idle"):
        keys = QueueKeys(prefix, queue)
        expected = {
            "wait": await redis.llen(keys.wait),
            "delayed": await redis.zcard(keys.delayed),
            "dead": await redis.llen(keys.dead),
        }
        for count, value in expected.items():
            await until(browser, lambda d, q=queue, c=count, v=value: cell(d, q, c) == str(v))
    assert (cell(browser, "idle", "wait"), cell(browser, "q", "dead")) == ("3", "2")
    idle = browser.find_element(By.CSS_SELECTOR, 'tr[data-queue="idle"]')
    assert idle.find_elements(By.CSS_SELECTOR, '[data-badge="no-process"]')
    assert browser.find_element(By.CSS_SELECTOR, "#processes tbody th").text.endswith(":w1")

    # A job completed by the worker shows without a reload, within 2 s.
    before = completed_in_hour(browser, "q")
    pushed = time.monotonic()
    await producer.enqueue("q", {}, id="live-1")
    await until(browser, lambda d: completed_in_hour(d, "q") == before + 1, within=2.0)
    seen_after = time.monotonic() - pushed
    assert seen_after < 2.0

    # The progress of a slow job moves on the page.
    await use_token(browser)
    await asyncio.to_thread(browser.get, base + "#queue=q&job=slow-1")
    await until(browser, lambda d: "No record" in d.find_element(By.ID, "job-body").text)
    steps = [[0.2, "one", 1.2], [0.6, "two", 1.2], [0.9, "three", 1.2]]
    await producer.enqueue("q", {"steps": steps, "returns": {"id": 9}}, id="slow-1")
    shown: list[str] = []

    def progressed(d: Driver) -> bool:
        for found in d.find_elements(By.ID, "job-progress"):
            text = found.text
            if text and (not shown or shown[-1] != text):
                shown.append(text)
        state = d.find_elements(By.CSS_SELECTOR, '[data-fact="state"]')
        return bool(state) and state[0].text == "completed"

    await until(browser, progressed, within=15)
    # It moved while the job ran (each step lasts 1.2 s; the page may miss one on a busy
    # machine, never all but the last).
    moved = [p for p in shown if p in ("20%", "60%", "90%")]
    assert len(moved) >= 2, shown
    assert moved == sorted(moved, key=lambda p: int(p[:-1])), shown
    assert '"id": 9' in browser.find_element(By.ID, "job-body").text
    await asyncio.to_thread(browser.set_window_size, 1400, 1750)  # the whole page
    screenshot(browser, "dashboard-progress")  # docs/dashboard.png is one of these
    await asyncio.to_thread(browser.get, base + "#queue=q")
    await until(browser, lambda d: "d-2" in d.find_element(By.ID, "dead-list").text)
    screenshot(browser, "dashboard-overview")
    assert no_dialog_opened(browser)


async def test_retry_from_dead_needs_the_token(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess], browser: Driver
) -> None:
    port = free_port()
    await add_dead(redis, prefix, "again-1", data={"returns": {"ok": True}})
    await start(spawn_worker, port)
    await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/#queue=q")
    await until(browser, lambda d: "needs the admin token" in d.find_element(By.ID, "dead").text)
    assert "Read-only" in browser.find_element(By.ID, "mode").text
    assert not browser.find_element(By.ID, "retry-all").is_enabled()
    # Hiding the button is a courtesy: the server refuses the request itself.
    status = await asyncio.to_thread(
        browser.execute_async_script,
        """const done = arguments[arguments.length - 1];
        fetch("api/queues/q/dead/retry", {method: "POST", body: '{"id": "again-1"}',
          headers: {"Content-Type": "application/json"}}).then(r => done(r.status));""",
    )
    assert status == 401
    assert await redis.llen(QueueKeys(prefix, "q").dead) == 1

    await use_token(browser)

    def click_retry(d: Driver) -> bool:
        button = d.find_element(By.CSS_SELECTOR, 'button[aria-label="Retry again-1"]')
        if not button.is_enabled():
            return False
        button.click()
        return True

    await until(browser, click_retry)
    await until(browser, lambda d: "retried 1" in d.find_element(By.ID, "dead-note").text)
    assert await redis.llen(QueueKeys(prefix, "q").dead) == 0
    await until(browser, lambda d: cell(d, "q", "dead") == "0")
    screenshot(browser, "dashboard-retried")

    # Purge asks for the queue's name first; pause and resume flip the queue.
    for n in range(3):
        await add_dead(redis, prefix, f"purge-{n}")
    await until(browser, lambda d: cell(d, "q", "dead") == "3")
    await asyncio.to_thread(browser.find_element(By.ID, "purge").click)
    typed = await until(browser, lambda d: d.find_element(By.ID, "confirm-input"))
    await asyncio.to_thread(typed.send_keys, "not-q")
    assert not browser.find_element(By.ID, "confirm-ok").is_enabled()
    await asyncio.to_thread(typed.clear)
    await asyncio.to_thread(typed.send_keys, "q")
    await asyncio.to_thread(browser.find_element(By.ID, "confirm-ok").click)
    await until(browser, lambda d: "purged 3" in d.find_element(By.ID, "dead-note").text)
    assert await redis.llen(QueueKeys(prefix, "q").dead) == 0

    def click(label: str) -> Callable[[Driver], bool]:
        def find_and_click(d: Driver) -> bool:
            row = d.find_element(By.CSS_SELECTOR, 'tr[data-queue="q"]')
            buttons = [b for b in row.find_elements(By.TAG_NAME, "button") if b.text == label]
            if buttons:
                buttons[0].click()
            return bool(buttons)

        return find_and_click

    await until(browser, click("Pause"))
    await wait_for(lambda: redis.exists(QueueKeys(prefix, "q").paused))
    await until(browser, click("Resume"))
    await wait_for(lambda: _gone(redis, QueueKeys(prefix, "q").paused))


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_hostile_text_is_shown_as_text(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess], browser: Driver
) -> None:
    port = free_port()
    await add_dead(redis, prefix, HOSTILE, message=HOSTILE, data={"note": HOSTILE})
    await start(spawn_worker, port)
    steps = [[0.5, HOSTILE, 0]]
    returns = {"html": HOSTILE, "url": "javascript:window.__ran=1"}  # not http(s): no link
    await Producer(redis, prefix=prefix).enqueue(
        "q", {"steps": steps, "returns": returns}, id=HOSTILE + "-job"
    )
    media = {"url": "https://media.example/a.png?X-Amz-Signature=x&y=<b>"}
    await Producer(redis, prefix=prefix).enqueue("q", {"returns": media}, id="media-job")
    base = f"http://127.0.0.1:{port}/"
    async with aiohttp.ClientSession() as http, http.get(base) as response:
        csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp

    await asyncio.to_thread(browser.get, base)
    await use_token(browser)
    # The id in the URL, the dead list (id, error, payload), and the job's step and result.
    in_url = base + "#queue=q&job=" + HOSTILE.replace(" ", "%20")
    await asyncio.to_thread(browser.get, in_url)
    await until(browser, lambda d: HOSTILE in d.find_element(By.ID, "job-title").text)
    await until(browser, lambda d: d.find_element(By.ID, "dead-list").text.count(HOSTILE) >= 3)
    await until(browser, lambda d: "Payload" in d.find_element(By.ID, "job-body").text)
    assert HOSTILE in browser.find_element(By.ID, "job-body").text
    await asyncio.to_thread(browser.get, in_url + "-job")
    await until(browser, lambda d: '"html": "' + HOSTILE in d.find_element(By.ID, "job-body").text)
    assert HOSTILE in browser.find_element(By.ID, "job-step").text
    assert browser.find_elements(By.ID, "job-result-url") == []
    # A result that carries an http(s) URL (a media job's) gets a link to it.
    await asyncio.to_thread(browser.get, base + "#queue=q&job=media-job")
    await until(browser, lambda d: d.find_elements(By.ID, "job-result-url"))
    link = browser.find_element(By.ID, "job-result-url")
    assert link.get_dom_attribute("href") == media["url"]
    assert (link.get_attribute("rel"), link.get_attribute("target")) == (
        "noopener noreferrer",
        "_blank",
    )
    await asyncio.to_thread(browser.get, in_url + "-job")
    await asyncio.sleep(0.5)  # time for an image error to fire, had one been made
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert no_dialog_opened(browser)
    screenshot(browser, "dashboard-hostile")
    # The second layer: markup forced into the page runs no inline handler, and the browser
    # reports the violation of the policy.
    outcome = await asyncio.to_thread(
        browser.execute_async_script,
        """const done = arguments[arguments.length - 1];
        document.addEventListener("securitypolicyviolation",
          (e) => done({directive: e.violatedDirective, ran: window.__ran === 1}));
        document.body.insertAdjacentHTML("beforeend", '<img src="x" onerror="window.__ran=1">');""",
    )
    assert outcome["directive"].startswith("script-src")
    assert outcome["ran"] is False
    assert no_dialog_opened(browser)


async def test_losing_the_listener_shows_disconnected_and_recovers(
    redis: Redis, spawn_worker: Callable[..., WorkerProcess], browser: Driver
) -> None:
    port = free_port()
    first = await start(spawn_worker, port)
    await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/")
    conn = await until(browser, lambda d: d.find_element(By.ID, "conn"))  # never redrawn
    await until(browser, lambda d: conn.text == "live")
    first.signal(signal.SIGTERM)
    assert await wait_exited(first) == 0
    await until(browser, lambda d: conn.text.startswith("disconnected"), within=10)
    screenshot(browser, "dashboard-disconnected")
    await start(spawn_worker, port)
    await until(browser, lambda d: conn.text == "live", within=20)
    await until(browser, lambda d: cell(d, "q", "wait") == "0")


async def test_behind_a_proxy_path_the_page_finds_its_files_and_feed(
    redis: Redis, prefix: str, spawn_worker: Callable[..., WorkerProcess], browser: Driver
) -> None:
    port = free_port()
    await Producer(redis, prefix=prefix).enqueue("idle", {}, id="waits")
    await start(spawn_worker, port, path_prefix="/ops/alchemy")
    await asyncio.to_thread(browser.get, f"http://localhost:{port}/ops/alchemy")  # no slash
    await until(browser, lambda d: d.find_element(By.ID, "conn").text == "live")
    assert browser.current_url == f"http://localhost:{port}/ops/alchemy/"
    await until(browser, lambda d: cell(d, "idle", "wait") == "1")
    sheets = browser.execute_script("return document.styleSheets.length")
    assert sheets == 1  # the style sheet came through the prefix too
