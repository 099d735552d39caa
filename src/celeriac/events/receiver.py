"""Reading the live event stream, as Celery's ``EventReceiver`` hands events to a monitor.

Each event comes out as Celery's receiver gives it to a handler: the sender's
clock merged into this process's (a client's ``task-sent`` has no clock to
trust, so it is given one just behind ours), ``timestamp`` moved into this
machine's zone from the sender's ``utcoffset``, and ``local_received`` set to
the time it arrived. A message holding a list of events (a Celery worker
sends its task events in batches, routing key ``task.multi``) yields each.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ..brokers.operations import Operations, Subscription
from .clock import LamportClock, process_clock
from .event import utcoffset

__all__ = ["EventReceiver", "localize"]

CLIENT_CLOCK_SKEW = -1


def localize(event: dict[str, Any], clock: LamportClock) -> dict[str, Any]:
    """``event`` as received (``event_from_message`` of ``celery.events.receiver``)."""
    if event.get("type") == "task-sent":
        event["clock"] = (clock.value or 1) + CLIENT_CLOCK_SKEW
        clock.adjust(event["clock"])
    elif isinstance(event.get("clock"), int):
        clock.adjust(event["clock"])
    else:
        event["clock"] = clock.forward()
    offset, timestamp = event.get("utcoffset"), event.get("timestamp")
    if isinstance(offset, int | float) and isinstance(timestamp, int | float):
        event["timestamp"] = timestamp - (offset - utcoffset()) * 3600
    event["local_received"] = time.time()
    return event


class EventReceiver:
    """The events sent while it is open (``async with``), as :func:`localize` gives them.

    ::

        async with EventReceiver(broker.operations()) as receiver:
            ...  # listening now: what is sent from here on is seen
            async for event in receiver.capture(limit=10, timeout=5.0):
                print(event["type"])
    """

    def __init__(self, operations: Operations, clock: LamportClock | None = None):
        self.operations = operations
        self.clock = clock or process_clock()
        self._subscription: Subscription | None = None

    async def __aenter__(self) -> EventReceiver:
        self._subscription = await self.operations.subscribe_events()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def capture(
        self, *, limit: int | None = None, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Events until ``limit`` came or ``timeout`` seconds passed (None: no end)."""
        if self._subscription is None:
            raise RuntimeError("open the EventReceiver (async with) before capturing")
        deadline = None if timeout is None else time.monotonic() + timeout
        count = 0
        while True:
            wait = 3600.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return
            received = await self._subscription.get(wait)
            if received is None:
                continue
            body: Any = received.body
            for event in body if isinstance(body, list) else [body]:
                if limit is not None and count >= limit:
                    return
                if isinstance(event, dict) and "type" in event:
                    yield localize(event, self.clock)
                    count += 1
