"""Beat's lease and schedule state on RabbitMQ: a single-active-consumer queue holding the state.

RabbitMQ has no keys or rows to lease, but it hands a single-active-consumer
queue to one consumer at a time, and to the next when that one's channel
closes. Every store that claims consumes the queue (a *turn*, on a connection
of its own); the active one holds the state messages and alone can write, so
it keeps the lease (holder, token, until) for every holder, as a Lua script
does on Redis.

Names (``P``: the broker's prefix; listed in :mod:`celeriac.amqp` too):

``Pceleriac.beat`` (``LEASE_QUEUE``), queue, classic whatever ``queue_type`` says (a
    quorum queue's delivery limit would drop a state handed back too often),
    durable, ``x-single-active-consumer: true``. A message is a state, JSON
    ``{"token", "holder", "until", "held", "runs": {entry: tick}}`` (``until``: the
    lease's end, ``held``: when it was written, unix seconds by the writer's
    clock), persistent; a turn's first message and a barrier are ``{"token": 0}``.
    Consumed with manual acks, no prefetch limit. Lifetime: durable; one message
    (the latest state), a few for a moment.
``Pceleriac.beat.latest`` (``LATEST_QUEUE``), queue, classic, durable,
    ``x-max-length: 1``: a copy of the latest state, for ``holder()`` and
    ``last_runs()`` of a store that is not the active one. Read by ``basic.get``
    on a channel then closed, which puts it back (a newer one drops it); of two
    readers at one instant, one finds none. Lifetime: durable.

* A turn opens at a store's first ``claim`` (or a ``record`` without one): a
  connection with a heartbeat of ``ceil(ttl / 2)`` s consumes the lease queue
  and publishes a first message, so that a fresh queue has something to deliver.
  A delivery means RabbitMQ made it the active one: it publishes a barrier and
  waits for it, so every state published before then has come too, and merges
  them (the lease of the largest token, with the latest end; each entry's latest
  tick). Nothing within ``ACTIVE_GRACE``: another store is active, this one waits
  in line, answering None and False.
* The active store answers ``claim``, ``record`` and ``release`` by the contract,
  writing each change to both queues on its channel in confirm mode, then acking
  the states it merged. A confirm shows that the channel was still open, so the
  store was still the active one; the next merges what it wrote.
* A lease a store did not write lapses ``until - held`` seconds after the state
  reached it, by its own clock: never before its holder's lease, whatever the
  hosts' clocks say. So a holder whose connection dropped keeps its lease until
  it lapses, served by the next store in line. A turn that closes cleanly writes
  the lease once more, so this costs nothing then; after a crash the next holder
  waits out the lease, up to ``ttl`` (as on Redis).
* A store that has not claimed for its last ``ttl`` closes its turn, handing the
  queue on; ``release`` ends the lease and closes the turn; ``close`` (also the
  broker's) closes it, leaving the lease to lapse. RabbitMQ ends a turn it stops
  hearing from (a network cut) 2 to 3 heartbeats after the last word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..brokers.beat_store import BeatStore, Lease
from ..errors import BrokerError
from .beat_state import State, forward, unix_time
from .wire import open_connection, properties_class, publish_confirmed, unavailable

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

    from .operations import Channels

__all__ = ["AmqpBeatStore", "LATEST_QUEUE", "LEASE_QUEUE"]

logger = logging.getLogger("celeriac.broker.amqp")

LEASE_QUEUE = "celeriac.beat"
LEASE_ARGUMENTS: dict[str, Any] = {"x-single-active-consumer": True}
LATEST_QUEUE = "celeriac.beat.latest"
LATEST_ARGUMENTS: dict[str, Any] = {"x-max-length": 1}
ACTIVE_GRACE = 0.2
"""Seconds a new turn waits, after its first message was confirmed, for a delivery
showing that its consumer is the active one."""
ROUND_TRIP_TIMEOUT = 10.0
"""Longest a publish waits for its confirm (a barrier: and for its delivery); past it
the turn is over."""
FALLBACK_TTL = 5.0
"""The ttl a turn opened by ``record`` uses for its heartbeat when its store never
claimed (``beat_lease_ttl``'s default)."""


def _with_heartbeat(driver_url: str, ttl: float) -> str:
    """``driver_url`` with a heartbeat of ``ceil(ttl / 2)`` seconds (at least 1)."""
    parts = urlsplit(driver_url)
    query = {**dict(parse_qsl(parts.query)), "heartbeat": str(max(1, math.ceil(ttl / 2)))}
    return parts._replace(query=urlencode(query)).geturl()


class _Turn:
    """A store's turn in the line: its connection consuming the lease queue and, once
    RabbitMQ made it the active consumer, the state it serves."""

    def __init__(self, connection: AbstractConnection, names: tuple[str, str]):
        self.lease = State()
        """The lease as the latest state has it; ``expires``: when it lapses (monotonic)."""
        self.expires = 0.0
        self.runs: dict[str, float] = {}
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._lease_queue, self._latest_queue = names
        self._held: dict[int, AbstractIncomingMessage] = {}
        """Delivery tag -> unacked state."""
        self._active = asyncio.Event()
        self._takeover: asyncio.Task[None] | None = None
        self._serving = self._lost = False
        self._arrivals: dict[str, asyncio.Future[None]] = {}
        self._writing = asyncio.Lock()
        """Held by each write and by closing: closing never cuts a write in half."""
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """Its channel closed, or it is closing: the store needs a new turn."""
        return self._lost or self._closing is not None

    @property
    def serving(self) -> bool:
        """RabbitMQ made it the active consumer and it has merged every state."""
        return self._serving and not self.done

    def valid(self) -> bool:
        return self.lease.holder is not None and time.monotonic() < self.expires

    async def start(self) -> None:
        """Consume the lease queue, publish the first message, and wait a moment for a
        delivery (this consumer is the active one) and the takeover it starts."""
        self._connection.close_callbacks.add(self._on_close)
        channel = self._channel = await self._connection.channel(publisher_confirms=True)
        channel.close_callbacks.add(self._on_close)
        queue = await channel.declare_queue(
            self._lease_queue, durable=True, arguments=LEASE_ARGUMENTS
        )
        await channel.declare_queue(self._latest_queue, durable=True, arguments=LATEST_ARGUMENTS)
        await queue.consume(self._on_message)
        await self._publish(State())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._active.wait(), ACTIVE_GRACE)
        await self.settled()

    async def settled(self) -> None:
        """Wait for a takeover under way, if any (one that fails ends the turn)."""
        if self._takeover is not None:
            await asyncio.wait([self._takeover])

    def _on_close(self, *_: Any) -> None:
        self._lost = True
        for arrival in self._arrivals.values():
            if not arrival.done():
                arrival.set_result(None)

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        if self._lost or incoming.delivery_tag is None:
            return
        state = State.parse(incoming.body)
        self._held[incoming.delivery_tag] = incoming
        self.runs = forward(self.runs, state.runs)
        expires = time.monotonic() + state.left  # after its writer's, whatever the clocks
        if (state.token, expires) > (self.lease.token, self.expires):
            self.lease, self.expires = state, expires
        arrival = self._arrivals.get(incoming.message_id or "")
        if arrival is not None and not arrival.done():
            arrival.set_result(None)
        if not self._active.is_set():
            self._active.set()
            self._takeover = asyncio.create_task(self._take_over())

    async def _take_over(self) -> None:
        """Publish a barrier and wait for it: then every earlier state has come."""
        try:
            await self._publish(State(), arrival=True)
            self._serving = True
        except Exception as exc:  # a closed channel, a refusal, a timeout
            logger.warning("beat could not take over its lease queue: %r", exc)
            self._end()

    async def _publish(self, state: State, *, copy: bool = False, arrival: bool = False) -> None:
        """Publish ``state`` to the lease queue (``copy``: to the latest queue too) on the
        turn's channel, confirmed; ``arrival``: also wait until it comes back here."""
        assert self._channel is not None
        message_id = uuid.uuid4().hex
        properties = properties_class()(
            content_type="application/json", delivery_mode=2, message_id=message_id
        )
        queues = (self._lease_queue, self._latest_queue) if copy else (self._lease_queue,)
        if arrival:
            self._arrivals[message_id] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT):
                await publish_confirmed(
                    self._channel, [("", queue, state.dumps(), properties) for queue in queues]
                )
                if arrival:
                    await self._arrivals[message_id]
        finally:
            self._arrivals.pop(message_id, None)
        if self._lost:
            raise BrokerError("beat's channel to RabbitMQ closed")

    async def write(
        self, holder: str | None, token: int, expires: float, runs: Mapping[str, float]
    ) -> bool:
        """Store the lease (``expires``: monotonic) and ``runs`` merged in; False if the
        turn is over (its channel closed: another store may be active)."""
        async with self._writing:
            return self.serving and await self._write(holder, token, expires, runs)

    async def _write(
        self, holder: str | None, token: int, expires: float, runs: Mapping[str, float]
    ) -> bool:
        merged = forward(self.runs, runs)
        now = time.time()
        state = State(token, holder, now + (expires - time.monotonic()), now, merged)
        replaced = list(self._held.items())
        try:
            await self._publish(state, copy=True)
            for tag, incoming in replaced:
                del self._held[tag]
                await incoming.ack()
        except Exception as exc:
            self._lost = True
            logger.warning("beat lost its lease queue: %r", exc)
            return False
        self.lease, self.expires = replace(state, runs={}), expires
        self.runs = forward(self.runs, merged)
        return True

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        lease = self.lease
        if self.valid() and lease.holder != holder:
            return None
        renewal = self.valid()
        until = time.monotonic() + ttl  # the clock before the round trip
        token = lease.token if renewal else lease.token + 1
        if not await self.write(holder, token, until, {}):
            return None
        idle_since = None if renewal or lease.holder is None else lease.until
        return Lease(holder, token, until, idle_since)

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        current = self.lease
        if lease.token != current.token or current.holder is None:
            return False
        return await self.write(current.holder, current.token, self.expires, runs)

    async def release(self, lease: Lease) -> bool:
        """End ``lease`` now if it is the current one; whether it did."""
        if not self.valid() or self.lease.token != lease.token:
            return False
        return await self.write(self.lease.holder, lease.token, time.monotonic(), {})

    def interest(self, until: float) -> None:
        """Stay in line (or active) until ``until`` (monotonic), then close."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(until - time.monotonic(), self._end)

    async def close(self) -> None:
        """Close the connection: RabbitMQ puts the states back and the next store in line
        becomes the active one."""
        await asyncio.wait([self._end()])

    def _end(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        return self._closing

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._takeover is not None and not self._takeover.done():
            self._takeover.cancel()
        async with self._writing:
            lease = self.lease
            if self._serving and not self._lost and lease.holder is not None:
                await self._write(lease.holder, lease.token, self.expires, {})  # held: now
            self._lost = True
            with contextlib.suppress(Exception):
                await self._connection.close()


class AmqpBeatStore(BeatStore):
    """The lease served by whichever store RabbitMQ made active (see the module doc)."""

    def __init__(self, broker: Channels, url: str, driver_url: str, connect_timeout: float):
        """``broker`` for names and reads; ``driver_url`` (aio-pika's) for the turns'
        own connections; ``url`` for messages."""
        self._broker = broker
        self._url = url
        self._driver_url = driver_url
        self._connect_timeout = connect_timeout
        self._turn: _Turn | None = None
        self._ttl: float | None = None
        self._lock = asyncio.Lock()

    def _names(self) -> tuple[str, str]:
        return self._broker.name(LEASE_QUEUE), self._broker.name(LATEST_QUEUE)

    async def _current(self) -> _Turn:
        """This store's turn (opened if it has none) kept in line for another ttl, once
        a takeover under way is done."""
        turn = self._turn
        if turn is None or turn.done:
            if turn is not None:
                await turn.close()
            turn = self._turn = await self._start()
        turn.interest(time.monotonic() + (self._ttl or FALLBACK_TTL))
        await turn.settled()
        return turn

    async def _start(self) -> _Turn:
        url = _with_heartbeat(self._driver_url, self._ttl or FALLBACK_TTL)
        try:
            connection = await open_connection(url, self._connect_timeout)
        except Exception as exc:
            raise unavailable(self._url, exc) from exc
        turn = _Turn(connection, self._names())
        try:
            await turn.start()
        except BaseException as exc:
            await turn.close()
            if isinstance(exc, Exception) and not isinstance(exc, BrokerError):
                raise BrokerError(f"RabbitMQ refused beat's lease queue: {exc}") from exc
            raise
        return turn

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        async with self._lock:
            self._ttl = ttl
            turn = await self._current()
            return await turn.claim(holder, ttl) if turn.serving else None

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        async with self._lock:
            turn = await self._current()
            return turn.serving and await turn.record(lease, runs)

    async def release(self, lease: Lease) -> None:
        async with self._lock:
            turn = self._turn
            if turn is not None and turn.serving and await turn.release(lease):
                await turn.close()
                self._turn = None

    async def _latest(self) -> State | None:
        """The latest state, from ``LATEST_QUEUE`` (None: none yet)."""
        try:
            channel = await self._broker.channel()
            try:
                queue = await channel.declare_queue(
                    self._names()[1], durable=True, arguments=LATEST_ARGUMENTS
                )
                incoming = await queue.get(no_ack=False, fail=False)
            finally:
                with contextlib.suppress(Exception):  # puts the message back
                    await channel.close()
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"RabbitMQ refused to read beat's state: {exc}") from exc
        return None if incoming is None else State.parse(incoming.body)

    async def holder(self) -> tuple[str, float] | None:
        turn = self._turn
        if turn is not None and turn.serving:
            holder = turn.lease.holder
            return (holder, unix_time(turn.expires)) if holder and turn.valid() else None
        state = await self._latest()
        if state is None or state.holder is None or state.until is None:
            return None
        return (state.holder, state.until) if state.until > time.time() else None

    async def last_runs(self) -> dict[str, float]:
        turn = self._turn
        if turn is not None and turn.serving:
            return dict(turn.runs)
        state = await self._latest()
        return {} if state is None else dict(state.runs)

    async def close(self) -> None:
        async with self._lock:
            turn, self._turn = self._turn, None
            if turn is not None:
                await turn.close()
