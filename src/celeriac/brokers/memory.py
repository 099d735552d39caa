"""The in-process broker (``memory://``), for tests: no server, no file.

State is process-global and keyed by the whole URL, as in kombu's memory
transport: every ``MemoryBroker("memory://")`` in the process shares the same
queues, whichever app object made it and whichever thread's event loop uses
it. So a client may publish from one thread's loop while a worker consumes on
another's. One ``threading.Lock`` per URL guards the state; a fetcher waiting
on an empty queue is woken with ``loop.call_soon_threadsafe`` by the publish
or release that gives it work (no polling), or at the moment the earliest
delayed message or lease comes due.

Per URL, per queue:

* ``ready``: heap of ``(-priority, visible_at, id, entry)``; fetch pops it.
* ``delayed``: heap of ``(visible_at, id, entry)``: ``not_before`` in the
  future, moved to ``ready`` when due.
* ``leased``: ``{id: entry}`` owned by a consumer until ``visible_at`` (the
  lease expiry, renewed by its heartbeat); a lapsed lease moves to ``ready``.

and ``dead``: ``{id: (DeadLetter, priority)}`` in dead-lettering order.
This is the SQLite broker's lease model, so the conformance suite checks the
same behaviour on both. Messages are stored as the ``Message`` objects given.
The operations plane's state and beat's lease and last runs are kept beside
these, per URL too (:mod:`celeriac.brokers.memory_operations`,
:mod:`celeriac.brokers.memory_beat`).

Tests call :func:`reset_memory_broker` to empty the state between tests;
brokers already created keep working on the emptied state.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..protocol import Message, Outgoing, encode_envelope
from ..shared_storage import StorageWrite
from .base import Broker, BrokerOptions, Consumer, DeadLetter, Delivery, QueueStats
from .beat_store import BeatStore
from .memory_beat import MemoryBeatStore, reset_memory_beat
from .memory_operations import MemoryOperations, reset_memory_operations
from .operations import Operations

__all__ = ["MemoryBroker", "reset_memory_broker"]


@dataclass(slots=True, eq=False)
class _Entry:
    id: int
    queue: str
    message: Message
    priority: int
    visible_at: float
    owner: str | None = None
    delivery_count: int = 0


@dataclass(slots=True)
class _Queue:
    ready: list[tuple[int, float, int, _Entry]] = field(default_factory=list)
    delayed: list[tuple[float, int, _Entry]] = field(default_factory=list)
    leased: dict[int, _Entry] = field(default_factory=dict)

    def put(self, entry: _Entry, now: float) -> None:
        entry.owner = None
        if entry.visible_at > now:
            heapq.heappush(self.delayed, (entry.visible_at, entry.id, entry))
        else:
            heapq.heappush(self.ready, (-entry.priority, entry.visible_at, entry.id, entry))

    def promote(self, now: float) -> None:
        """Make due delayed messages and lapsed leases ready."""
        while self.delayed and self.delayed[0][0] <= now:
            self.put(heapq.heappop(self.delayed)[2], now)
        for lapsed in [e for e in self.leased.values() if e.visible_at <= now]:
            del self.leased[lapsed.id]
            self.put(lapsed, now)

    def next_due(self) -> float:
        """When the earliest delayed message or lease comes due (inf: never)."""
        due = [e.visible_at for e in self.leased.values()]
        if self.delayed:
            due.append(self.delayed[0][0])
        return min(due, default=float("inf"))


@dataclass(slots=True, eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    queues: frozenset[str]

    def wake(self) -> None:
        def resolve() -> None:
            if not self.future.done():
                self.future.set_result(None)

        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(resolve)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self.dead: dict[str, tuple[DeadLetter, int]] = {}
        self.waiters: list[_Waiter] = []
        self.ids = itertools.count(1)

    def put(self, entry: _Entry, now: float) -> list[_Waiter]:
        """Queue ``entry``; return the waiters to wake (call with the lock held)."""
        self.queues[entry.queue].put(entry, now)
        woken = [w for w in self.waiters if entry.queue in w.queues]
        self.waiters = [w for w in self.waiters if entry.queue not in w.queues]
        return woken

    def clear(self) -> None:
        with self.lock:
            self.queues.clear()
            self.dead.clear()


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def _state(url: str) -> _State:
    with _STATES_LOCK:
        return _STATES.setdefault(url, _State())


def reset_memory_broker(url: str | None = None) -> None:
    """Empty the queues and dead letters of ``url``, or of every ``memory://`` URL
    (and forget its revokes and beat lease)."""
    with _STATES_LOCK:
        states = list(_STATES.values()) if url is None else [_STATES.get(url) or _State()]
    for state in states:
        state.clear()
    reset_memory_operations(url)
    reset_memory_beat(url)


def _wake(waiters: Iterable[_Waiter]) -> None:
    for waiter in waiters:
        waiter.wake()


class MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._state = broker._state
        self._owner = f"{name}#{secrets.token_hex(4)}"  # a namesake must not renew our leases

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        if acks:
            await self._ack(acks)
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            waiter = _Waiter(loop, loop.create_future(), frozenset(self.queues))
            with self._state.lock:
                deliveries, next_due = self._take(limit)
                if deliveries:
                    return deliveries
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._state.waiters.append(waiter)
            try:
                await asyncio.wait([waiter.future], timeout=min(remaining, next_due - time.time()))
            finally:
                with self._state.lock:
                    if waiter in self._state.waiters:
                        self._state.waiters.remove(waiter)

    def _take(self, limit: int) -> tuple[list[Delivery], float]:
        """Lease up to ``limit`` ready entries, best first (call with the lock held)."""
        now = time.time()
        queues = [self._state.queues[name] for name in self.queues]
        for queue in queues:
            queue.promote(now)
        taken: list[Delivery] = []
        while len(taken) < limit:
            best = min((q for q in queues if q.ready), key=lambda q: q.ready[0], default=None)
            if best is None:
                break
            entry = heapq.heappop(best.ready)[3]
            entry.owner = self._owner
            entry.visible_at = now + self.options.lease_timeout
            entry.delivery_count += 1
            best.leased[entry.id] = entry
            taken.append(Delivery(entry.message, entry.queue, entry.delivery_count, entry.id))
        return taken, min(q.next_due() for q in queues)

    def _unlease(self, delivery: Delivery) -> _Entry | None:
        """Take back ``delivery``'s entry if this consumer still owns it (lock held)."""
        leased = self._state.queues[delivery.queue].leased
        entry = leased.get(delivery.tag)
        if entry is None or entry.owner != self._owner:
            return None
        return leased.pop(delivery.tag)

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        """``writes`` never come: no result store shares this broker's storage."""
        with self._state.lock:
            for delivery in deliveries:
                self._unlease(delivery)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        woken: list[_Waiter] = []
        now = time.time()
        with self._state.lock:
            for delivery in deliveries:
                entry = self._unlease(delivery)
                if entry is not None:
                    entry.delivery_count -= uncount
                    entry.visible_at = now if not_before is None else not_before
                    woken += self._state.put(entry, now)
        _wake(woken)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._state.lock:
            entry = self._unlease(delivery)
            if entry is not None:
                dead_id = str(next(self._state.ids))
                raw = encode_envelope(entry.message, entry.queue)
                letter = DeadLetter(
                    dead_id,
                    entry.queue,
                    entry.message,
                    raw,
                    reason,
                    entry.delivery_count,
                    time.time(),
                )
                self._state.dead[dead_id] = (letter, entry.priority)

    async def _heartbeat(self) -> None:
        until = time.time() + self.options.lease_timeout
        with self._state.lock:
            for name in self.queues:
                for entry in self._state.queues[name].leased.values():
                    if entry.owner == self._owner:
                        entry.visible_at = until


class MemoryBroker(Broker):
    """``memory://`` (or ``memory://name`` for a separate set of queues)."""

    scheme = "memory"
    shares_processes = False

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self._state = _state(url)

    def consumer(self, queues: Sequence[str], name: str) -> MemoryConsumer:
        return MemoryConsumer(self, queues, name)

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _make_operations(self) -> Operations:
        return MemoryOperations(self.url)

    def _make_beat_store(self) -> BeatStore:
        return MemoryBeatStore(self.url)

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        woken: list[_Waiter] = []
        now = time.time()
        with self._state.lock:
            for o in batch:
                visible_at = now if o.not_before is None else o.not_before
                entry = _Entry(next(self._state.ids), o.queue, o.message, o.priority, visible_at)
                woken += self._state.put(entry, now)
        _wake(woken)

    async def purge(self, queue: str) -> int:
        with self._state.lock:
            q = self._state.queues[queue]
            q.promote(time.time())
            count = len(q.ready) + len(q.delayed)
            q.ready.clear()
            q.delayed.clear()
        return count

    async def stats(self, queue: str) -> QueueStats:
        with self._state.lock:
            q = self._state.queues[queue]
            q.promote(time.time())
            return QueueStats(len(q.ready), len(q.delayed), len(q.leased))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._state.lock:
            letters = (d for d, _ in self._state.dead.values() if queue in (None, d.queue))
            return list(itertools.islice(letters, limit))

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        woken: list[_Waiter] = []
        count, now = 0, time.time()
        with self._state.lock:
            for dead_id in ids:
                letter, priority = self._state.dead.get(dead_id, (None, 0))
                if letter is None or letter.message is None:
                    continue
                del self._state.dead[dead_id]
                entry = _Entry(next(self._state.ids), letter.queue, letter.message, priority, now)
                woken += self._state.put(entry, now)
                count += 1
        _wake(woken)
        return count

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        with self._state.lock:
            doomed = [i for i, (d, _) in self._state.dead.items() if queue in (None, d.queue)]
            for dead_id in doomed:
                del self._state.dead[dead_id]
        return len(doomed)

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        with self._state.lock:
            dead_id = str(next(self._state.ids))
            letter = DeadLetter(dead_id, queue, None, raw, reason, 0, time.time())
            self._state.dead[dead_id] = (letter, 0)
