"""The dashboard's live feed: server-sent events fed by the queues' events streams.

One :class:`LiveFeed` per listener, shared by every open page:

- one reader task follows every queue's events stream with ``XREAD BLOCK`` on a connection
  of its own, and notes which queues changed (at most :data:`READ_COUNT` entries a read and
  :data:`READ_PAUSE` between reads: under load it skips ahead, since a page only needs to
  know that something changed, not what);
- one pusher task renders the overview (from the shared one-second cache, read again when
  it is older than the change) when something changed, at most every :data:`COALESCE`
  seconds, and at least every :data:`PUSH_EVERY` seconds (a producer's push writes no
  event), and hands the same bytes to every client;
- each client has a bounded queue of :data:`CLIENT_QUEUE` messages: a client that does not
  keep up is dropped (its page reconnects), never buffered without bound.

Both tasks start with the first client and stop with the last. The reader survives Redis
errors (it backs off and resumes where it was); the pusher sends a ``problem`` message while
the overview cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
import structlog
from redis.asyncio.cluster import RedisCluster

from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from alchemy.worker.connections import Backoff, describe

log = structlog.get_logger("alchemy.http")

READ_BLOCK_MS: Final = 1000
READ_COUNT: Final = 200
READ_PAUSE: Final = 0.2  # seconds between two reads that returned entries
COALESCE: Final = 0.5  # seconds between two pushes at most once
PUSH_EVERY: Final = 2.0  # seconds without a change before the overview is pushed anyway
CLIENT_QUEUE: Final = 8  # messages waiting for one client before it is dropped
CLUSTER_POLL_S: Final = 0.25  # on a Cluster: how often quiet streams are read again
RETRY_MS: Final = 2000  # the reconnect delay a page is told (the SSE "retry" field)

# The overview, read after ``since`` (a time.monotonic() when something changed).
Render = Callable[[float], Awaitable[dict[str, Any]]]


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Client:
    """One open page: the messages waiting for it, None to end its stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)

    def offer(self, message: bytes | None) -> bool:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveFeed:
    def __init__(
        self,
        *,
        prefix: str,
        queues: Sequence[str],
        connect: Callable[[], RedisClient],
        render: Render,
        coalesce: float = COALESCE,
        push_every: float = PUSH_EVERY,
    ) -> None:
        self.streams = {QueueKeys(prefix, q).events: q for q in queues}
        self.connect = connect
        self.render = render
        self.coalesce = coalesce
        self.push_every = push_every
        self.clients: set[Client] = set()
        self.dropped = 0  # clients dropped for not keeping up
        self.pushes = 0
        self.reads = 0
        self._changes: dict[str, dict[str, int]] = {}
        self._changed_at = float("-inf")
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis: RedisClient | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    # -- clients ----------------------------------------------------------------------------
    def join(self) -> Client:
        client = Client()
        if self._closed:
            client.end()
            return client
        self.clients.add(client)
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._read_loop(), name="live:read"),
                asyncio.create_task(self._push_loop(), name="live:push"),
            ]
            for task in self._tasks:
                task.add_done_callback(self._task_done)
        return client

    def leave(self, client: Client) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._stop_tasks()

    def _broadcast(self, message: bytes) -> None:
        for client in list(self.clients):
            if not client.offer(message):
                self.dropped += 1
                self.clients.discard(client)
                client.end()
                log.info("live_client_dropped", reason="not keeping up")
        if not self.clients:
            self._stop_tasks()

    async def first_message(self) -> bytes:
        """What a page gets as soon as it connects: the overview now."""
        return await self._message({}, float("-inf"))

    # -- the reader ---------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        ids = dict.fromkeys(self.streams, "$")
        backoff = Backoff()
        while True:
            try:
                if self._redis is None:
                    self._redis = self.connect()
                reply = await self._read(self._redis, ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Logged once per run of failures; not a readiness problem of the worker.
                if not backoff.failures:
                    log.warning("live_read_failing", error=describe(exc))
                await self._drop_connection()
                await asyncio.sleep(backoff.next_delay())
                continue
            if backoff.failures:
                log.info("live_read_recovered", failures=backoff.failures)
            backoff.reset()
            self.reads += 1
            if reply:
                self._note(reply, ids)
                await asyncio.sleep(READ_PAUSE)

    @staticmethod
    async def _read(redis: RedisClient, ids: dict[str, str]) -> Any:
        """New entries of every stream: one blocking XREAD, or on a Cluster (each queue's
        stream in its own slot, so one XREAD cannot name them all) one quick XREAD per
        stream and a short pause when all were quiet."""
        if not isinstance(redis, RedisCluster):
            return await redis.xread(ids, count=READ_COUNT, block=READ_BLOCK_MS)  # type: ignore[arg-type]
        reply: list[Any] = []
        for key, last in ids.items():
            if last == "$":  # "from now on" means nothing to a read that does not block
                newest = await redis.xrevrange(key, count=1)
                newest_id = newest[0][0] if newest else None
                last = ids[key] = _text(newest_id) if newest_id is not None else "0-0"
            reply.extend(await redis.xread({key: last}, count=READ_COUNT) or [])
        if not reply:
            await asyncio.sleep(CLUSTER_POLL_S)
        return reply

    def _note(self, reply: Any, ids: dict[str, str]) -> None:
        for raw_key, entries in reply:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            queue = self.streams.get(key)
            if queue is None or not entries:
                continue
            counts = self._changes.setdefault(queue, {})
            for _, fields in entries:
                event = fields.get(b"event", b"?").decode("utf-8", "replace")
                counts[event] = counts.get(event, 0) + 1
            last = entries[-1][0]
            # A full read means it is behind: skip to what comes next.
            ids[key] = "$" if len(entries) >= READ_COUNT else _text(last)
        self._changed_at = time.monotonic()
        self._changed.set()

    async def _drop_connection(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    # -- the pusher ---------------------------------------------------------------------------
    async def _push_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.push_every)
            self._changed.clear()
            pushed_at = loop.time()
            changes, self._changes = self._changes, {}
            since = self._changed_at if changes else float("-inf")
            self._broadcast(await self._message(changes, since))
            self.pushes += 1
            await asyncio.sleep(max(0.0, self.coalesce - (loop.time() - pushed_at)))

    async def _message(self, changes: dict[str, dict[str, int]], since: float) -> bytes:
        try:
            body = await self.render(since)
        except Exception as exc:
            return sse("problem", {"error": f"redis unavailable: {type(exc).__name__}"})
        body["changes"] = changes
        return sse("overview", body)

    # -- lifecycle ----------------------------------------------------------------------------
    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task not in self._tasks:
            return
        error = task.exception()
        log.error("live_task_ended", task=task.get_name(), error=repr(error))
        self._stop_tasks()  # the next page to connect starts both again
        for client in list(self.clients):
            client.end()
        self.clients.clear()

    def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            asyncio.get_running_loop().create_task(self._after_stop(tasks))

    async def _after_stop(self, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._tasks:
            await self._drop_connection()

    async def close(self) -> None:
        """End every page's stream and stop reading (the listener is going away)."""
        self._closed = True
        for client in list(self.clients):
            client.end()
        self.clients.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._drop_connection()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
