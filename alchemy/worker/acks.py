"""Acknowledgements of one queue's finished jobs, batched: many per round trip under load.

A finished job's item is handed to :meth:`AckBatcher.add`; one loop takes whatever has
accumulated and removes it from the processing list in one atomic step. A batch is never
dropped: while Redis refuses or is away, the same batch is sent again with a capped backoff
(every step is safe to re-send), so a completed job is acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from alchemy.queue.store import QueueStore
from alchemy.worker.connections import until_done


class AckBatcher:
    def __init__(self, store: QueueStore, release: Callable[[Iterable[bytes]], None]) -> None:
        self.store = store
        self.release = release  # called with each batch once it is acknowledged
        self._pending: list[bytes] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False

    def add(self, item: bytes) -> None:
        self._pending.append(item)
        self._ready.set()

    async def run(self) -> None:
        """Acknowledge batches until cancelled (a batch being sent is finished first)."""
        self._running = True
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                batch, self._pending = self._pending, []
                if not batch:
                    continue
                self._idle.clear()
                try:
                    await asyncio.shield(self._send(batch))
                finally:
                    if not self._pending:
                        self._idle.set()
        finally:
            self._running = False

    async def _send(self, batch: list[bytes]) -> None:
        await until_done(lambda: self.store.ack(batch), what="ack", queue=self.store.queue)
        self.release(batch)

    async def flush(self) -> None:
        """Wait until every item added so far is acknowledged; sends them itself when the
        loop is not running (it ended, and the process is stopping because of it)."""
        while self._pending or not self._idle.is_set():
            if not self._running:
                await self._idle.wait()  # a batch the loop was sending is finished first
                batch, self._pending = self._pending, []
                if batch:
                    await self._send(batch)
                continue
            self._ready.set()
            await self._idle.wait()
            await asyncio.sleep(0)
