"""Sending events without ever holding up a task: a bounded buffer, flushed in batches.

:meth:`EventDispatcher.send` builds the event and appends it to a buffer; it
never waits and never raises. A background task on the event loop publishes
what is buffered through the broker's operations plane
(``Operations.send_events``), in batches, every ``flush_interval`` seconds or
as soon as ``batch_size`` events wait. A broker that is slow or down cannot
slow the tasks: while a publish is stuck the buffer fills, and past
``buffer_limit`` new events are dropped and counted; a failed publish drops
its batch and counts it. Both counts are in :meth:`statistics` and in a log
line at most every ``LOG_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..brokers.operations import Operations
from .clock import LamportClock, process_clock
from .event import make_event

__all__ = ["DispatcherStats", "EventDispatcher"]

logger = logging.getLogger("celeriac.events")

LOG_EVERY = 30.0
"""Seconds between two log lines about lost events."""


@dataclass(slots=True)
class DispatcherStats:
    """``statistics()`` of a dispatcher: events sent, and events lost and why."""

    sent: int = 0
    dropped: int = 0
    """Not buffered: the buffer was full (the broker too slow, or down)."""
    failed: int = 0
    """Buffered, then lost with a batch the broker refused."""
    buffered: int = 0


class EventDispatcher:
    """The events of one process (a worker process, or a client for task-sent).

    Made and used on one event loop: :meth:`send` is called from that loop's
    thread, :meth:`start` starts the flushing there, :meth:`close` flushes
    what is left (for at most ``timeout`` seconds) and stops.
    """

    def __init__(
        self,
        operations: Operations,
        hostname: str,
        *,
        buffer_limit: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        clock: LamportClock | None = None,
    ):
        self.operations = operations
        self.hostname = hostname
        self.buffer_limit = max(1, buffer_limit)
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.clock = clock or process_clock()
        self._buffer: deque[dict[str, Any]] = deque()
        self._stats = DispatcherStats()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._lost_since_log = 0
        self._last_log = float("-inf")

    def statistics(self) -> DispatcherStats:
        self._stats.buffered = len(self._buffer)
        return self._stats

    def send(self, type_: str, **fields: Any) -> None:
        """Buffer the event ``type_`` (``task-succeeded``) with ``fields``; never waits."""
        if len(self._buffer) >= self.buffer_limit:
            self._stats.dropped += 1
            self._lost(1, "the buffer is full")
            return
        self._buffer.append(make_event(type_, self.hostname, self.clock, fields))
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        """Start flushing in the background (on the running loop)."""
        if self._flusher is None and not self._closing:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def close(self, timeout: float = 5.0) -> None:
        """Publish what is buffered, for at most ``timeout`` seconds, and stop; what is
        left then is counted as failed."""
        self._closing = True
        self._wake.set()
        flusher, self._flusher = self._flusher, None
        work = flusher if flusher is not None else asyncio.ensure_future(self.flush())
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(work, timeout)
        if self._buffer:
            self._stats.failed += len(self._buffer)
            self._lost(len(self._buffer), "closing with the broker too slow")
            self._buffer.clear()

    async def flush(self) -> None:
        """Publish every buffered event, a batch at a time; a refused batch is dropped."""
        while self._buffer:
            count = min(len(self._buffer), self.batch_size)
            batch = [self._buffer.popleft() for _ in range(count)]
            try:
                await self.operations.send_events(batch)
            except asyncio.CancelledError:
                self._stats.failed += count
                raise
            except Exception as exc:
                self._stats.failed += count
                self._lost(count, f"the broker refused them: {exc}")
            else:
                self._stats.sent += count

    async def _flush_forever(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            await self.flush()
        await self.flush()

    def _lost(self, count: int, why: str) -> None:
        """Count lost events; log them at most once every ``LOG_EVERY`` seconds."""
        self._lost_since_log += count
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY:
            return
        logger.warning(
            "%d event(s) lost (%s); %d dropped and %d failed so far",
            self._lost_since_log,
            why,
            self._stats.dropped,
            self._stats.failed,
        )
        self._lost_since_log = 0
        self._last_log = now
