"""The log format: one JSON object per line, a UTC timestamp, secrets masked, standard
library records routed through the same renderer, lines of one loop turn in one write; and
the sink: a writer thread behind a bounded buffer, so a stuck stdout drops and counts lines
instead of blocking the loop, and says how many once it takes lines again."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from alchemy.logs import (
    _UtcStamper,
    bind_job_context,
    configure_logging,
    dropped_lines,
    fast_info,
    flush_logs,
    register_secrets,
)


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.writers: set[int] = set()

    def write(self, data: Any) -> int:
        self.writes += 1
        self.writers.add(threading.get_ident())
        return super().write(data)


@pytest.fixture
def out() -> Iterator[CountingStream]:
    stream = CountingStream()
    configure_logging(level="info", fmt="json", stream=stream)
    yield stream
    register_secrets(())
    configure_logging(level="info", fmt="json")


def lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    flush_logs()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_event_is_one_json_line_with_a_utc_timestamp(out: CountingStream) -> None:
    before = time.time()
    structlog.get_logger().info("first", queue="q", n=1)
    structlog.get_logger().warning("second", note="two\nlines")
    after = time.time()
    first, second = lines(out)
    assert (first["event"], first["level"], first["queue"], first["n"]) == ("first", "info", "q", 1)
    assert (second["level"], second["note"]) == ("warning", "two\nlines")
    stamp = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 0.001 <= stamp.timestamp() <= after + 0.001


def test_the_fast_line_is_the_line_structlog_would_write(out: CountingStream) -> None:
    """The consumer's per-job line skips the processors: same fields (the bound context
    too, a field given winning over a bound one), secrets masked; and it steps aside when
    the configuration in force is not this module's (capture_logs)."""
    register_secrets(["sk-very-secret-key"])
    structlog.contextvars.bind_contextvars(queue="q", job_id="sk-very-secret-key", attempt=2)
    try:
        structlog.get_logger().info("job_finished", outcome="completed", attempt=3, ms=1.5)
        assert fast_info("job_finished", {"outcome": "completed", "attempt": 3, "ms": 1.5})
        with structlog.testing.capture_logs() as captured:
            assert not fast_info("job_finished", {"outcome": "completed"})
        assert captured == []
    finally:
        structlog.contextvars.clear_contextvars()
    slow, fast = lines(out)
    assert slow.pop("ts")
    assert fast.pop("ts")
    assert (
        fast
        == slow
        == {
            "event": "job_finished",
            "level": "info",
            "outcome": "completed",
            "attempt": 3,
            "ms": 1.5,
            "queue": "q",
            "job_id": "***",
        }
    )
    configure_logging(level="warning", fmt="json", stream=out)
    assert fast_info("job_finished", {"outcome": "completed"})  # filtered, like structlog
    assert len(lines(out)) == 2


def test_the_stamper_matches_the_clock_across_seconds() -> None:
    stamper = _UtcStamper()
    for _ in range(3):
        event: dict[str, Any] = {}
        now = time.time()
        stamper(None, "info", event)
        stamp = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(stamp.timestamp() - now) < 0.01
        time.sleep(0.6)  # the cached date and time of day must move on with the second


def test_secrets_are_masked_in_every_field(out: CountingStream) -> None:
    register_secrets(["sk-very-secret-key"])
    structlog.get_logger().error(
        "provider_failed",
        error="401 for key sk-very-secret-key",
        detail=ValueError("sk-very-secret-key"),
    )
    logging.getLogger("some.library").warning("called with sk-very-secret-key")
    flush_logs()
    assert b"sk-very-secret-key" not in out.getvalue()
    event, library = lines(out)
    assert event["error"] == "401 for key ***"
    assert event["detail"] == "***"
    assert library["event"] == "called with ***"
    assert library["level"] == "warning"


async def test_lines_of_one_loop_turn_are_written_at_once_by_the_writer_thread(
    out: CountingStream,
) -> None:
    log = structlog.get_logger()
    for n in range(50):
        log.info("job_finished", n=n)
    assert out.writes == 0  # handed over at the end of the turn, written by the thread
    await asyncio.sleep(0)
    assert flush_logs()
    assert out.writes == 1
    assert out.writers != {threading.get_ident()}
    assert [line["n"] for line in lines(out)] == list(range(50))


class GatedStream(io.BytesIO):
    """A stream whose writes block until ``opened`` is set, like a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()
        self.entered = threading.Event()

    def write(self, data: Any) -> int:
        self.entered.set()
        self.opened.wait(30)
        return super().write(data)


@pytest.fixture
def gated() -> Iterator[GatedStream]:
    stream = GatedStream()
    configure_logging(level="info", fmt="json", stream=stream, buffer_lines=10)
    yield stream
    stream.opened.set()
    configure_logging(level="info", fmt="json")


async def test_a_stuck_stream_never_blocks_the_loop_and_drops_are_told_once(
    gated: GatedStream,
) -> None:
    log = structlog.get_logger()
    before = dropped_lines()
    log.info("first")
    await asyncio.sleep(0)
    assert gated.entered.wait(5)  # the writer thread is stuck writing "first"
    started = time.monotonic()
    for n in range(100):
        log.info("next", n=n)
        if n % 10 == 0:
            await asyncio.sleep(0)  # several turns, each handed over on its own
    await asyncio.sleep(0)
    assert time.monotonic() - started < 1.0
    assert dropped_lines() - before == 90  # the buffer holds 10 lines
    assert not flush_logs(timeout=0.2)  # still stuck: gives up

    gated.opened.set()
    assert flush_logs()
    written = lines(gated)
    assert [e["event"] for e in written] == ["first", *["next"] * 10, "log_lines_dropped"]
    assert [e["n"] for e in written[1:11]] == list(range(10))
    notice = written[-1]
    assert (notice["level"], notice["dropped"]) == ("warning", 90)
    datetime.strptime(notice["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    log.info("later")  # no further notice without further drops
    assert [e["event"] for e in lines(gated)[len(written) :]] == ["later"]


def test_flush_at_exit_gives_up_on_a_stuck_stream(gated: GatedStream) -> None:
    structlog.get_logger().info("stuck")
    assert gated.entered.wait(5)
    started = time.monotonic()
    assert not flush_logs(timeout=0.5)
    assert 0.4 <= time.monotonic() - started < 2.0
    started = time.monotonic()
    assert not flush_logs(timeout=0.5)  # stuck for longer already: no second wait at exit
    assert time.monotonic() - started < 0.2
    gated.opened.set()
    assert flush_logs(timeout=5)
    assert [e["event"] for e in lines(gated)] == ["stuck"]


class FailingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def write(self, data: Any) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)


def test_lines_lost_in_a_failed_write_count_as_dropped() -> None:
    stream = FailingStream()
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        before = dropped_lines()
        structlog.get_logger().info("lost")
        logging.getLogger("some.library").warning("lost too")
        assert flush_logs()
        assert dropped_lines() - before == 2
        stream.broken = False
        structlog.get_logger().info("back")
        assert [(e["event"], e.get("dropped")) for e in lines(stream)] == [
            ("back", None),
            ("log_lines_dropped", 2),
        ]
    finally:
        configure_logging(level="info", fmt="json")


def test_the_dropped_line_follows_the_level() -> None:
    stream = FailingStream()
    configure_logging(level="error", fmt="json", stream=stream)
    try:
        structlog.get_logger().error("lost")
        assert flush_logs()
        stream.broken = False
        structlog.get_logger().error("back")
        assert [e["event"] for e in lines(stream)] == ["back"]  # a warning, filtered out
    finally:
        configure_logging(level="info", fmt="json")


def test_a_pipe_nobody_reads_fills_drops_then_resumes() -> None:
    """The descriptor path (os.write), as on a real stdout."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    configure_logging(level="info", fmt="json", stream=stream, buffer_lines=100)
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    try:
        before = dropped_lines()
        log = structlog.get_logger()
        started = time.monotonic()
        for n in range(2000):  # about 200 KiB; a pipe holds 64 KiB
            log.info("filler", n=n, padding="x" * 60)
        assert time.monotonic() - started < 2.0
        assert dropped_lines() - before > 1000
        reader.start()
        assert flush_logs(timeout=5)
        log.info("after")
        assert flush_logs(timeout=5)
        events = [json.loads(line) for line in bytes(received).splitlines()]
        # One line after each batch that followed drops (the buffer also overflows while
        # the writer lingers between batches, so there may be more than one).
        told = sum(e["dropped"] for e in events if e["event"] == "log_lines_dropped")
        assert told == dropped_lines() - before
        numbers = [e["n"] for e in events if e["event"] == "filler"]
        assert numbers == sorted(numbers)
        assert len(numbers) + told == 2000
        assert events[-1]["event"] == "after"
    finally:
        configure_logging(level="info", fmt="json")
        stream.close()
        if reader.is_alive():
            reader.join(5)  # at the end of the pipe
        os.close(read_end)  # a writer still stuck in it fails, if the test did


async def test_lines_from_other_threads_all_arrive_in_order(out: CountingStream) -> None:
    def log_from_a_thread(name: str) -> None:
        for n in range(500):
            if n % 2:
                logging.getLogger("some.library").warning("%s %d", name, n)
            else:
                structlog.get_logger().info(f"{name} {n}")

    threads = [threading.Thread(target=log_from_a_thread, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for n in range(500):
        structlog.get_logger().info(f"loop {n}")
        if n % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.to_thread(log_from_a_thread, "to_thread")
    for thread in threads:
        thread.join()
    seen: dict[str, list[int]] = {}
    for event in lines(out):
        source, n = event["event"].split()
        seen.setdefault(source, []).append(int(n))
    assert seen.keys() == {"loop", "to_thread", "t0", "t1", "t2", "t3"}
    assert all(numbers == list(range(500)) for numbers in seen.values())


def test_lines_of_a_turn_its_loop_never_ended_come_first() -> None:
    stream = CountingStream()
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        loop = asyncio.new_event_loop()

        def last_callback() -> None:
            structlog.get_logger().info("last turn")
            loop.stop()  # the turn's end is never reached

        loop.call_soon(last_callback)
        loop.run_forever()
        loop.close()
        structlog.get_logger().info("after the loop")

        async def next_loop() -> None:
            structlog.get_logger().info("next loop")

        asyncio.run(next_loop())
        assert [e["event"] for e in lines(stream)] == ["last turn", "after the loop", "next loop"]
    finally:
        configure_logging(level="info", fmt="json")


def test_a_job_context_binds_what_bind_contextvars_binds_in_its_own_context_only() -> None:
    def bound(*job: Any) -> dict[str, Any]:
        bind_job_context(*job)
        return structlog.contextvars.get_contextvars()

    first = contextvars.copy_context().run(bound, "research", "j-1", 1, "host:a")
    second = contextvars.copy_context().run(bound, "media", "j-2", 3, "host:b")
    assert first == {"queue": "research", "job_id": "j-1", "attempt": 1, "worker": "host:a"}
    assert second == {"queue": "media", "job_id": "j-2", "attempt": 3, "worker": "host:b"}
    assert "job_id" not in structlog.contextvars.get_contextvars()  # the caller's is untouched
