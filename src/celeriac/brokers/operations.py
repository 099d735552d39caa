"""The operations plane's contract: what every broker carries besides tasks.

Three things travel here, each in Celery's own shape so that Celery's tools
(``celery inspect``, ``celery control``, Flower) and celeriac's meet on a
broker they share:

* **Events** (``celery.events``): dicts with ``type`` (``task-succeeded``,
  ``worker-heartbeat``, ...), ``hostname``, ``timestamp``, ``utcoffset``,
  ``pid``, ``clock`` and the type's own fields. Celery publishes them to the
  ``celeryev`` topic exchange with the routing key ``task.succeeded`` (the
  type with ``-`` made ``.``). Fire and forget: nobody listening, nothing
  kept; a listener sees what was sent while it listened.
* **The mailbox** (``kombu.pidbox``): a command is a dict ``{"method",
  "arguments", "destination", "pattern", "matcher"}`` plus ``"ticket"`` and
  ``"reply_to": {"exchange", "routing_key"}`` when the sender wants replies,
  sent with the headers ``{"clock", "expires"}`` to every worker (the
  ``celery.pidbox`` fanout exchange); each node decides from ``destination``
  whether it is meant. A reply is ``{hostname: answer}`` sent to
  ``reply_to`` with the headers ``{"ticket", "clock"}``; the sender keeps
  the replies whose ticket is its own.
* **Revokes**: task ids with the time (unix seconds) until which a worker
  must not run them. Kept in the broker's storage, so a worker that starts
  later, and every process of every worker, honours a revoke sent before.

Where Celery defines the form on a broker (RabbitMQ's exchanges, kombu's Redis
layout) an implementation uses exactly that form; elsewhere (SQLite, memory,
celeriac's own Redis layout) a form of its own, with the same meaning.
``tests/conformance/test_operations.py`` checks every broker against this
contract.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "EVENT_EXCHANGE",
    "MAILBOX_EXCHANGE",
    "REPLY_EXCHANGE",
    "Operations",
    "QueueSubscription",
    "Received",
    "Subscription",
    "event_messages",
    "event_routing_key",
]

EVENT_EXCHANGE = "celeryev"
MAILBOX_EXCHANGE = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"


def event_routing_key(event_type: str) -> str:
    """Celery's routing key of an event: ``task-succeeded`` -> ``task.succeeded``."""
    return event_type.replace("-", ".")


EVENT_GROUP_LIMIT = 100
"""Most task events in one ``task.multi`` message."""


def event_messages(
    events: Sequence[dict[str, Any]],
) -> list[tuple[str, dict[str, Any] | list[dict[str, Any]]]]:
    """``events`` as Celery's buffering dispatcher publishes them: runs of task events
    as ``task.multi`` messages whose body is their list (at most
    ``EVENT_GROUP_LIMIT`` each), every other event alone; order kept.

    Every Celery receiver (``celery events``, Flower) reads a list body as its
    events; one message for many events is what keeps events cheap on a
    broker that pays per message (RabbitMQ).
    """
    messages: list[tuple[str, dict[str, Any] | list[dict[str, Any]]]] = []
    run: list[dict[str, Any]] = []
    for event in events:
        kind = str(event.get("type", ""))
        if kind.startswith("task-"):
            run.append(event)
            if len(run) < EVENT_GROUP_LIMIT:
                continue
        if run:
            messages.append(("task.multi", run) if len(run) > 1 else (_key(run[0]), run[0]))
            run = []
        if not kind.startswith("task-"):
            messages.append((event_routing_key(kind), event))
    if run:
        messages.append(("task.multi", run) if len(run) > 1 else (_key(run[0]), run[0]))
    return messages


def _key(event: Mapping[str, Any]) -> str:
    return event_routing_key(str(event.get("type", "")))


@dataclass(frozen=True, slots=True)
class Received:
    """One event, command or reply, decoded."""

    body: dict[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)
    """The message headers: ``clock``/``expires`` on a command, ``ticket``/``clock``
    on a reply, ``hostname`` on an event (as Celery sends them)."""


class Subscription(ABC):
    """What was sent to one address from the moment it was opened until closed.

    Iterating waits for each message; :meth:`get` waits at most ``timeout``.
    Closing it is idempotent; ``async with`` closes it.
    """

    @abstractmethod
    async def get(self, timeout: float) -> Received | None:
        """The next message, or None when ``timeout`` seconds pass first."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Received]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Received]:
        while True:
            received = await self.get(3600.0)
            if received is not None:
                yield received


class QueueSubscription(Subscription):
    """A subscription fed by its implementation through :meth:`put`, from any thread.

    Made on the event loop that reads it.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Received] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def put(self, received: Received) -> None:
        if self.closed or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, received)

    async def get(self, timeout: float) -> Received | None:
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.closed = True


class Operations(ABC):
    """One broker's operations plane (``Broker.operations()``): one per broker instance,
    sharing its connection where it can; closed with the broker."""

    @abstractmethod
    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Publish events (each with its ``type``), in order, in as few round trips as
        the broker allows. Lost if nobody listens; never stored for later."""

    @abstractmethod
    async def subscribe_events(self) -> Subscription:
        """Every event sent from now on (returns once listening)."""

    @abstractmethod
    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        """Broadcast a mailbox command to every worker listening now."""

    @abstractmethod
    async def subscribe_commands(self, hostname: str) -> Subscription:
        """The commands sent from now on, for the node ``hostname`` to filter (returns
        once listening; on RabbitMQ, Celery's ``<hostname>.celery.pidbox`` queue)."""

    @abstractmethod
    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        """Send one reply to a command's ``reply_to``; dropped if nobody waits."""

    @abstractmethod
    async def subscribe_replies(self, routing_key: str) -> Subscription:
        """Replies sent to ``{"exchange": REPLY_EXCHANGE, "routing_key": routing_key}``
        from now on. Open it before sending the command that asks for them."""

    @abstractmethod
    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        """Keep ``{task id: until}`` (unix seconds); a later ``until`` for an id wins."""

    @abstractmethod
    async def revoked(self) -> dict[str, float]:
        """Every revoke not yet past its ``until``; expired ones may be dropped here."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the operations plane holds beyond the broker's connection."""
