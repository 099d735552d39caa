"""The broker contract: what every broker guarantees, and the primitives it supplies.

Guarantees (checked for every broker by ``tests/conformance/test_broker.py``):

* ``publish`` returns only once the broker holds the messages durably (where
  the broker can be durable), in one batch.
* At-least-once: a delivery stays owned by its consumer until acked. Ownership
  is a *lease* that the consumer's heartbeat renews; a consumer that dies stops
  renewing and its deliveries become visible again once the lease lapses. A
  live consumer keeps its deliveries however long the task runs.
* ``Outgoing.not_before`` delays a message inside the broker, never in worker
  memory. Visible messages come out by priority (9 highest, 0 lowest), then by
  the time they became visible, then in publish order.
* A message delivered ``max_deliveries`` times without an ack goes to the
  dead-letter store with a log line instead of being delivered again.
* ``close`` hands every unacked delivery back at once, uncounted.

Policy lives here (ack batching, the heartbeat timer, the dead-letter rule,
priority clamping); a broker module supplies the ``_``-prefixed primitives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import Message, Outgoing
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .beat_store import BeatStore
from .operations import Operations

logger = logging.getLogger("celeriac.broker")

CARRIED_FLUSH_DELAY = 0.005
"""Seconds an ack carrying a result waits for a fetch to ride with, when no
fetch is under way (a worker fetches again as soon as a slot is free, so
both usually go in one round trip). While a fetch is under way, waiting for
messages, such an ack goes at once."""

__all__ = ["Broker", "BrokerOptions", "Consumer", "DeadLetter", "Delivery", "QueueStats"]


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Broker policy from the app's settings."""

    lease_timeout: float = 10.0
    """Seconds a delivery stays owned without a heartbeat before it is redelivered."""
    max_deliveries: int = 5
    """Deliveries without an ack before a message is dead-lettered."""
    ack_flush_interval: float = 0.05
    """Longest time an ack waits to be sent with others."""
    poll_interval: float = 0.05
    """Longest wait between two looks at an idle queue, for brokers that poll."""
    connect_timeout: float = 4.0
    """Seconds to wait for a networked broker's server to accept a connection."""
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    """``broker_transport_options``: broker-specific knobs (e.g. Redis ``global_keyprefix``)."""

    @property
    def heartbeat_interval(self) -> float:
        return self.lease_timeout / 4


@dataclass(slots=True)
class Delivery:
    """One message handed to one consumer, until acked or handed back."""

    message: Message
    queue: str
    delivery_count: int
    """1 on the first delivery; counts deliveries that were never acked."""
    tag: Any
    """The broker's own handle for ack/requeue (row id, stream entry id, ...)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    """The dead-letter store's id for this entry (requeue/purge by it)."""
    queue: str
    message: Message | None
    """None when the stored bytes were not a message at all."""
    raw: bytes
    reason: str
    delivery_count: int
    dead_at: float


DeadLetterHook = Callable[[Delivery, str, BaseException | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class QueueStats:
    ready: int
    delayed: int
    reserved: int


def clamp_priority(priority: int | None) -> int:
    if priority is None:
        return 0
    return 0 if priority < 0 else 9 if priority > 9 else int(priority)


class Broker(ABC):
    """A message broker reached by URL. One instance per process and event loop."""

    scheme: str = ""
    shares_processes: bool = True
    """False for brokers that live inside one process (memory://)."""

    def __init__(self, url: str, options: BrokerOptions | None = None):
        self.url = url
        self.options = options or BrokerOptions()
        self._operations: Operations | None = None
        self._beat_store: BeatStore | None = None

    def operations(self) -> Operations:
        """This broker's operations plane (events, the mailbox, revokes), made on first
        use; it shares the broker's connection, so connect the broker first."""
        if self._operations is None:
            self._operations = self._make_operations()
        return self._operations

    @abstractmethod
    def _make_operations(self) -> Operations:
        """The broker's plane (a module of its technology's folder; see ``operations.py``)."""

    def beat_store(self) -> BeatStore:
        """Where beat keeps its leader lease and last runs in this broker's storage, made
        on first use; it shares the broker's connection, so connect the broker first."""
        if self._beat_store is None:
            self._beat_store = self._make_beat_store()
        return self._beat_store

    @abstractmethod
    def _make_beat_store(self) -> BeatStore:
        """The broker's beat store (a module of its technology's folder; see ``beat_store.py``)."""

    storage: str | None = None
    """The database the messages live in, when a result store in the same one can
    hand its writes to ``publish`` (see ``celeriac.shared_storage``); None: none can."""

    async def publish(
        self, batch: Sequence[Outgoing], *, writes: Sequence[StorageWrite] = ()
    ) -> None:
        """Store every message of ``batch``; returns once they are durable.

        ``writes`` (only for a broker with a ``storage``) are made with the
        messages, in the same transaction or round trip.
        """
        if not batch:
            return
        clamped = [
            o
            if 0 <= o.priority <= 9
            else Outgoing(o.queue, o.message, clamp_priority(o.priority), o.not_before)
            for o in batch
        ]
        if writes:
            await self._publish_with(clamped, writes)
        else:
            await self._publish(clamped)

    async def _publish_with(
        self, batch: Sequence[Outgoing], writes: Sequence[StorageWrite]
    ) -> None:
        """``_publish`` plus ``writes``; brokers with a ``storage`` supply it."""
        raise NotImplementedError(f"{type(self).__name__} shares no storage with a result store")

    @abstractmethod
    def consumer(self, queues: Sequence[str], name: str) -> Consumer:
        """A consumer of ``queues`` (earlier queues are not preferred: priority rules)."""

    @abstractmethod
    async def connect(self) -> None:
        """Reach the broker, or raise BrokerUnavailable naming the URL and the fix."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _publish(self, batch: Sequence[Outgoing]) -> None: ...

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; return how many."""

    @abstractmethod
    async def stats(self, queue: str) -> QueueStats: ...

    @abstractmethod
    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first, of one queue or all."""

    @abstractmethod
    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        """Put dead letters back on their queues, with a fresh delivery count."""

    @abstractmethod
    async def purge_dead_letters(self, queue: str | None = None) -> int: ...

    async def dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        """Store bytes that are not a message at all in the dead-letter store."""
        await self._dead_letter_raw(queue, raw, reason)

    @abstractmethod
    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"


class Consumer(ABC):
    """Takes deliveries from some queues of a broker, and settles them.

    ``ack`` is buffered and sent with the next ``fetch`` or within
    ``ack_flush_interval``; a crash before the flush redelivers, which
    at-least-once allows. The heartbeat timer starts with the first fetch.

    An ack may carry a result store's writes (``celeriac.shared_storage``),
    when the store shares the broker's database: they are made before the ack
    or with it, atomically, with the next fetch when it comes within
    ``CARRIED_FLUSH_DELAY``.
    """

    def __init__(self, broker: Broker, queues: Sequence[str], name: str):
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        self.broker = broker
        self.queues = tuple(queues)
        self.name = name
        self.options = broker.options
        self._pending_acks: list[Delivery] = []
        self._pending_writes: list[StorageWrite] = []
        self._fetching = False
        self._held: dict[int, Delivery] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._flush_at = 0.0
        """The loop time ``_flush_handle`` fires at (uvloop's ``call_later(0)``
        returns a plain ``Handle``, which has no ``when()``)."""
        self._flush_task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_heartbeat: float = 0.0
        self.heartbeat_error: BaseException | None = None
        self.on_dead_letter: DeadLetterHook | None = None
        """Told of every delivery this consumer dead-letters, with the reason and
        the exception behind it, if any (the worker records REJECTED)."""

    @property
    def held(self) -> int:
        """Deliveries owned and not yet acked."""
        return len(self._held)

    async def fetch(self, limit: int, timeout: float) -> list[Delivery]:
        """Up to ``limit`` deliveries; waits up to ``timeout`` seconds for the first."""
        if self._closed:
            raise RuntimeError("consumer is closed")
        self._start_heartbeat()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        acks, self._pending_acks = self._pending_acks, []
        writes, self._pending_writes = self._pending_writes, []
        self._fetching = True
        try:
            deliveries = await self._ack_and_fetch(acks, writes, limit, timeout)
        except BaseException:
            self._pending_acks[:0] = acks  # acks are idempotent: sending one twice is harmless
            self._pending_writes[:0] = writes  # and so are the writes of results
            raise
        finally:
            self._fetching = False
        ready: list[Delivery] = []
        doomed: list[Delivery] = []
        for d in deliveries:
            (doomed if d.delivery_count > self.options.max_deliveries else ready).append(d)
        for d in doomed:
            reason = f"delivered {d.delivery_count - 1} times without an ack"
            await self.dead_letter(d, reason)
        for d in ready:
            self._held[id(d)] = d
        return ready

    async def start(self, limit: int) -> None:  # noqa: B027 - optional hook
        """Begin receiving, ready to take up to ``limit``: a message published from now on
        reaches this consumer's queues (RabbitMQ declares and binds them here). Brokers
        whose queues need no declaring have nothing to do."""

    async def ack(self, delivery: Delivery, writes: Sequence[StorageWrite] = ()) -> None:
        """Acknowledge ``delivery`` soon; ``writes`` (only for a broker with a
        ``storage``) are made before the ack or in the same transaction."""
        self._held.pop(id(delivery), None)
        self._pending_acks.append(delivery)
        delay = self.options.ack_flush_interval
        loop = asyncio.get_running_loop()
        if writes:
            self._pending_writes.extend(writes)
            delay = 0.0 if self._fetching else min(delay, CARRIED_FLUSH_DELAY)
            if self._flush_handle is not None and self._flush_at > loop.time() + delay:
                self._flush_handle.cancel()
                self._flush_handle = None
        if self._flush_handle is None:
            self._flush_later(loop, delay)

    def _flush_later(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._flush_at = loop.time() + delay
        self._flush_handle = loop.call_later(delay, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        if not self._pending_acks:
            return
        loop = asyncio.get_running_loop()
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = loop.create_task(self.flush_acks())
        else:  # a flush is on its way: these go with the next one
            delay = CARRIED_FLUSH_DELAY if self._pending_writes else self.options.ack_flush_interval
            self._flush_later(loop, delay)

    async def flush_acks(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending_acks:
            batch, self._pending_acks = self._pending_acks, []
            writes, self._pending_writes = self._pending_writes, []
            try:
                await self._ack(batch, writes)
            except BaseException:
                self._pending_acks[:0] = batch
                self._pending_writes[:0] = writes
                raise

    async def requeue(self, delivery: Delivery, delay: float = 0.0, *, count: bool = True) -> None:
        """Hand a delivery back, visible after ``delay`` seconds.

        ``count=False`` (rate limits, shutdown) takes this delivery off the
        count that leads to the dead-letter store.
        """
        self._held.pop(id(delivery), None)
        not_before = time.time() + delay if delay > 0 else None
        await self._release([delivery], not_before, uncount=not count)

    async def dead_letter(
        self, delivery: Delivery, reason: str, cause: BaseException | None = None
    ) -> None:
        """Move ``delivery`` to the dead-letter store, log it, and tell ``on_dead_letter``."""
        self._held.pop(id(delivery), None)
        logger.error(
            "dead-lettered message %s from queue %r: %s",
            delivery.message.headers.get("id", "?"),
            delivery.queue,
            reason,
        )
        await self._dead_letter(delivery, reason)
        if self.on_dead_letter is not None:
            await self.on_dead_letter(delivery, reason, cause)

    async def heartbeat(self) -> None:
        """Renew the leases of every delivery this consumer holds."""
        await self._heartbeat()
        self.last_heartbeat = time.time()

    async def close(self) -> None:
        """Flush acks, hand back what is held (uncounted), stop the heartbeat."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        with contextlib.suppress(Exception):
            await self.flush_acks()
        if self._held:
            held, self._held = list(self._held.values()), {}
            with contextlib.suppress(Exception):
                await self._release(held, None, uncount=True)
        await self._close()

    def abandon(self) -> None:
        """Stop heartbeating and forget what is held, as a consumer that died would."""
        self._closed = True
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._held.clear()
        self._pending_acks.clear()
        self._pending_writes.clear()

    def _start_heartbeat(self) -> None:
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        # Not `while True`: a driver may swallow the cancellation from close() or
        # abandon() (asyncio.wait_for in Python 3.11 can), and an abandoned
        # consumer must stop renewing its leases.
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self.heartbeat()
                self.heartbeat_error = None
            except Exception as exc:  # the worker reports it; the loop keeps trying
                self.heartbeat_error = exc
                logger.warning("heartbeat to %r failed: %s", self.broker, exc)

    @abstractmethod
    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """Make ``writes`` and settle ``acks`` as ``_ack`` does, then lease up to ``limit``
        deliveries, waiting up to ``timeout`` seconds for the first; in one round trip
        or transaction where the broker can."""

    @abstractmethod
    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        """Make ``writes`` (only for a broker with a ``storage``), then acknowledge the
        ``deliveries`` this consumer still holds, atomically. A delivery another
        consumer took over after this one's lease lapsed is theirs to settle."""

    @abstractmethod
    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None: ...

    @abstractmethod
    async def _dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    @abstractmethod
    async def _heartbeat(self) -> None: ...

    async def _close(self) -> None:  # noqa: B027 - optional hook
        """Release the consumer's own resources, if it has any."""
