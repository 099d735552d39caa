"""The RabbitMQ broker (``amqp://``, ``amqps://``) on aio-pika.

Beside it: ``consumer.py`` (fetching, settling), ``wire.py`` (URLs,
connections, messages as AMQP properties), ``operations.py`` (the
operations plane: Celery's events and mailbox, the revoke stream) and
``beat.py`` (beat's lease; ``close`` closes its connection too).

URL: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS, with
``?cafile=...`` and the other ``wire.DRIVER_OPTIONS``; the default vhost ``/`` is
written ``//`` or left out, as in kombu). Options, in
``broker_transport_options`` or the URL's query (which wins):
``queue_type="quorum"`` (quorum queues; default classic), ``prefix="t1."``
(put before every name celeriac declares; for tests), ``plain_queues``
(queues declared exactly as Celery declares them; default ``celery``; a list,
or ``a,b`` in the query), ``bindings`` (queue -> ``exchange``, ``type``,
``routing_key``, ``auto_delete``: how a queue is bound instead of to the
exchange of its own name; the app sets it from ``task_queues``).
Needs RabbitMQ 3.10+ and ``pip install 'celeriac[amqp]'``.

Names and headers: listed in the package's docstring (:mod:`celeriac.amqp`).

Mechanism:

* Publish: one confirm channel; a batch is published at once and the
  confirms are awaited together. ``publish`` returns once RabbitMQ confirmed
  every message (persistent messages on durable queues: written to disk).
* Fetch: ``basic_consume`` on each queue, with ``basic_qos`` prefetch set to
  the deliveries the consumer holds plus ``limit``; deliveries land in a
  buffer, ``fetch`` takes up to ``limit`` from it. A lease is an unacked
  delivery on the consumer's channel: RabbitMQ keeps it from other consumers
  however long the task runs, and puts it back when the channel or the
  connection closes (a dead worker). The heartbeat checks the connection.
* Delivery count: quorum queues report ``x-delivery-count``. Classic queues
  only say ``redelivered``; a redelivered message is published again with
  ``x-celeriac-deliveries`` one higher and the original acked (after the
  confirm), so each lost delivery counts exactly once. Requeue and hand-back
  publish a new copy with the count they mean, then ack the original.
* Dead letters: a delivery over ``max_deliveries`` goes to ``Pceleriac.dead``.
* Reconnect: a fetch on a lost connection raises BrokerError; the next call
  reconnects and consumes again. Unacked deliveries of the lost connection
  were put back by RabbitMQ; their acks are dropped.
* ``stats().reserved`` counts the unacked deliveries of this process (AMQP
  does not report other connections' unacked messages without the
  management plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..brokers.base import Broker, BrokerOptions, DeadLetter, QueueStats
from ..brokers.beat_store import BeatStore
from ..brokers.operations import Operations
from ..errors import BrokerError, ConfigurationError
from ..protocol import Message, Outgoing
from ..url_schemes import redact_url
from .beat import AmqpBeatStore
from .consumer import AmqpConsumer
from .operations import AmqpOperations
from .wire import (
    Binding,
    Send,
    dead_letter_of,
    dead_properties,
    open_connection,
    publish_confirmed,
    route_of,
    split_url,
    spread,
    to_properties,
    unavailable,
)

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractIncomingMessage,
        AbstractQueue,
    )


__all__ = ["AmqpBroker", "AmqpConsumer", "delay_routing_key"]

T = TypeVar("T")
A = TypeVar("A")

DELAY_LEVELS = 32
"""Rungs of the delay ladder: delays up to 2**32 ms (49.7 days) in one pass."""
DELAY_PREFIX = "celeriac.delay."
DEAD_QUEUE = "celeriac.dead"
MAX_PRIORITY = 10
POOL_CHANNELS = 8
"""Channels that declare and count a queue's delay queues at once."""
STATS_RECOUNTS = 5
"""Most extra counts ``stats`` makes while a delayed message moves between rungs."""


def delay_routing_key(delay_ms: int, queue: str) -> str:
    bits = ".".join(str((delay_ms >> i) & 1) for i in reversed(range(DELAY_LEVELS)))
    return f"{bits}.{queue}"


class AmqpBroker(Broker):
    """RabbitMQ through aio-pika: confirms, manual acks, prefetch, a TTL delay ladder."""

    scheme = "amqp"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self._driver_url, query = split_url(url)
        # broker_transport_options first, the URL's query over them.
        settings = {**self.options.transport_options, **query}
        self.prefix = str(settings.get("prefix", ""))
        self.queue_type = str(settings.get("queue_type", "classic"))
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigurationError(
                f"queue_type must be classic or quorum, not {self.queue_type!r}"
            )
        plain = settings.get("plain_queues", "celery")
        names = plain.split(",") if isinstance(plain, str) else list(plain)
        self.plain_queues = frozenset(str(q) for q in names if q)
        self.bindings: dict[str, Binding] = {
            str(queue): Binding.of(spec)
            for queue, spec in dict(settings.get("bindings") or {}).items()
        }
        self._exchanges: set[str] = set()
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._admin: AbstractChannel | None = None
        self._connect_lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._delay_declared: set[str] = set()
        self._ladder = False
        self._pool: list[AbstractChannel] = []
        self.reserved: Counter[str] = Counter()
        """Unacked deliveries per queue held by this process's consumers."""

    # -- connection ------------------------------------------------------------
    async def connect(self) -> None:
        await self._ensure_connection()

    def _alive(self) -> bool:
        """aio-pika's ``is_closed`` misses a close by the server; ask the transport too."""
        connection = self._connection
        if connection is None or connection.is_closed:
            return False
        transport = getattr(connection, "transport", None)
        return transport is not None and not transport.connection.is_closed

    async def _ensure_connection(self) -> AbstractConnection:
        if self._connection is not None and self._alive():
            return self._connection
        async with self._connect_lock:
            if self._connection is not None and self._alive():
                return self._connection
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
            self._declared.clear()
            self._delay_declared.clear()
            self._exchanges.clear()
            self._ladder = False
            self._publisher = self._admin = None
            self._pool = []
            try:
                self._connection = await open_connection(
                    self._driver_url, self.options.connect_timeout
                )
            except Exception as exc:  # OSError, TLS, timeouts, AMQP errors (credentials, vhost)
                raise unavailable(self.url, exc) from exc
            return self._connection

    async def channel(self, *, confirms: bool = False) -> AbstractChannel:
        connection = await self._ensure_connection()
        try:
            return await connection.channel(publisher_confirms=confirms)
        except Exception as exc:
            raise unavailable(self.url, exc) from exc

    async def _publish_channel(self) -> AbstractChannel:
        if self._publisher is None or self._publisher.is_closed:
            self._publisher = await self.channel(confirms=True)
        return self._publisher

    async def _admin_channel(self) -> AbstractChannel:
        if self._admin is None or self._admin.is_closed:
            self._admin = await self.channel()
        return self._admin

    async def close(self) -> None:
        if self._beat_store is not None:
            await self._beat_store.close()
        if self._operations is not None:
            await self._operations.close()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

    def _make_operations(self) -> Operations:
        return AmqpOperations(self)

    def _make_beat_store(self) -> BeatStore:
        return AmqpBeatStore(self, self.url, self._driver_url, self.options.connect_timeout)

    # -- declarations ----------------------------------------------------------
    def name(self, queue: str) -> str:
        return self.prefix + queue

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        if queue in self.plain_queues:  # exactly what Celery declares for it
            return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}
        if self.queue_type == "quorum":
            return {"x-queue-type": "quorum", "x-delivery-limit": self.options.max_deliveries}
        return {"x-max-priority": MAX_PRIORITY}

    async def declare(self, queue: str) -> None:
        """Declare ``queue`` (as Celery would, see the module doc) unless it exists."""
        if queue in self._declared:
            return
        name = self.name(queue)
        probe = await self.channel()
        try:
            await probe.declare_queue(name, passive=True)
            exists = True
        except Exception:
            exists = False
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        binding = self.bindings.get(queue) or Binding(queue, "direct", queue, False)
        channel = await self._admin_channel()
        if not exists:
            await channel.declare_queue(
                name,
                durable=True,
                auto_delete=binding.auto_delete,
                arguments=self.queue_arguments(queue),
            )
        exchange = await self.declare_exchange(binding.exchange, binding.type)
        amqp_queue = await channel.get_queue(name, ensure=False)
        await amqp_queue.bind(exchange, routing_key=binding.routing_key)
        self._declared.add(queue)
        if not binding.auto_delete:  # a broadcast queue lives with its worker: no delays
            await self.declare_delays(queue)

    async def declare_exchange(self, exchange: str, kind: str) -> str:
        """Declare exchange ``P<exchange>`` (durable) once per connection; its name."""
        name = self.name(exchange)
        if name not in self._exchanges:
            channel = await self._admin_channel()
            await channel.declare_exchange(name, kind, durable=True)
            self._exchanges.add(name)
        return name

    async def _declare_ladder(self) -> None:
        if self._ladder:
            return
        names = [self.name(f"{DELAY_PREFIX}{level}") for level in range(DELAY_LEVELS)]
        deliver = self.name(DELAY_PREFIX + "deliver")

        async def exchange(channel: AbstractChannel, name: str) -> None:
            await channel.declare_exchange(name, "topic", durable=True)

        async def bind(channel: AbstractChannel, level: int) -> None:
            raw = await channel.get_underlay_channel()
            lower = deliver if level == 0 else names[level - 1]
            pattern = "*." * (DELAY_LEVELS - 1 - level) + "0.#"
            await raw.exchange_bind(destination=lower, source=names[level], routing_key=pattern)

        await self._spread(exchange, [deliver, *names])
        await self._spread(bind, range(DELAY_LEVELS))
        self._ladder = True

    async def declare_delays(self, queue: str) -> None:
        """The delay queues of ``queue`` and their bindings (once per connection)."""
        if queue in self._delay_declared:
            return
        await self.declare(queue)
        admin = await self._admin_channel()
        await self._declare_ladder()
        deliver = self.name(DELAY_PREFIX + "deliver")
        await (await admin.get_underlay_channel()).queue_bind(
            self.name(queue), deliver, routing_key="*." * DELAY_LEVELS + queue
        )

        async def level(channel: AbstractChannel, level: int) -> None:
            below = deliver if level == 0 else self.name(f"{DELAY_PREFIX}{level - 1}")
            name = self.name(f"{DELAY_PREFIX}{queue}.{level}")
            raw = await channel.get_underlay_channel()
            await raw.queue_declare(
                name,
                durable=True,
                arguments={"x-message-ttl": 2**level, "x-dead-letter-exchange": below},
            )
            pattern = "*." * (DELAY_LEVELS - 1 - level) + "1." + "*." * level + queue
            await raw.queue_bind(name, self.name(f"{DELAY_PREFIX}{level}"), routing_key=pattern)

        await self._spread(level, range(DELAY_LEVELS))
        self._delay_declared.add(queue)

    async def _spread(
        self, call: Callable[[AbstractChannel, A], Awaitable[T]], items: Sequence[A]
    ) -> list[T]:
        """``call(channel, item)`` for each item, over ``POOL_CHANNELS`` channels at once."""
        while len(self._pool) < POOL_CHANNELS:
            self._pool.append(await self.channel())
        for i, channel in enumerate(self._pool):
            if channel.is_closed:
                self._pool[i] = await self.channel()
        return await spread(self._pool, call, items)

    # -- publishing ------------------------------------------------------------
    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        try:
            await self.publish_all(batch)
        except (BrokerError, ConfigurationError):
            raise
        except Exception as exc:
            if not self._alive():
                raise unavailable(self.url, exc) from exc
            raise BrokerError(
                f"RabbitMQ at {redact_url(self.url)} refused a publish: {exc}"
            ) from exc

    async def publish_all(
        self, batch: Sequence[Outgoing], count: dict[int, int] | None = None
    ) -> None:
        """Publish ``batch`` (declaring its queues), message ``i`` with the delivery
        count ``count[i]`` its next delivery reports (default 1); confirmed."""
        now = time.time()
        routes = [route_of(o.message) for o in batch]
        for o, route in zip(batch, routes, strict=True):
            if o.not_before is not None and o.not_before > now:
                if route is not None and route.type == "fanout":
                    raise ConfigurationError(
                        f"a broadcast (fanout exchange {route.exchange!r}) cannot be delayed"
                    )
                await self.declare_delays(o.queue)
            elif route is not None:
                await self.declare_exchange(route.exchange, route.type)
                if route.type != "fanout":  # fanout: each worker's own queue gets a copy
                    await self.declare(o.queue)
            else:
                await self.declare(o.queue)
        sends: list[Send] = []
        top = self.name(f"{DELAY_PREFIX}{DELAY_LEVELS - 1}")
        for i, (o, route) in enumerate(zip(batch, routes, strict=True)):
            n = count.get(i, 1) if count else 1
            properties = to_properties(o.message, o.priority, n, o.not_before)
            if o.not_before is not None and o.not_before > now:
                delay_ms = min(math.ceil((o.not_before - now) * 1000), 2**DELAY_LEVELS - 1)
                key = delay_routing_key(delay_ms, o.queue)
                sends.append((top, key, o.message.body, properties))
            elif route is not None:
                sends.append(
                    (self.name(route.exchange), route.routing_key, o.message.body, properties)
                )
            else:
                sends.append(("", self.name(o.queue), o.message.body, properties))
        await self.send(sends)

    async def send(self, sends: Sequence[Send]) -> None:
        """Publish every ``(exchange, routing key, body, properties)``, then await all confirms."""
        await publish_confirmed(await self._publish_channel(), sends)

    # -- consuming -------------------------------------------------------------
    def consumer(self, queues: Sequence[str], name: str) -> AmqpConsumer:
        return AmqpConsumer(self, queues, name, rabbit=self)

    # -- admin -----------------------------------------------------------------
    @staticmethod
    async def _count(channel: AbstractChannel, name: str) -> int:
        raw = await channel.get_underlay_channel()
        declared = await raw.queue_declare(name, passive=True)
        return int(declared.message_count or 0)

    def _names_of(self, queue: str) -> list[str]:
        """The queue itself, then its delay queues."""
        delays = [f"{DELAY_PREFIX}{queue}.{level}" for level in range(DELAY_LEVELS)]
        return [self.name(q) for q in [queue, *delays]]

    async def stats(self, queue: str) -> QueueStats:
        """Counts of the queue and its delay rungs. A delayed message moves from rung
        to rung while they are counted (it could count twice or not at all), so
        the rungs are counted until two counts in a row agree (a few times at most)."""
        try:
            await self.declare_delays(queue)
            names = self._names_of(queue)
            counts = await self._spread(self._count, names)
            for _ in range(STATS_RECOUNTS):
                again = await self._spread(self._count, names)
                if again == counts:
                    break
                counts = again
            ready, *delays = counts
        except BrokerError:
            raise
        except Exception as exc:
            raise unavailable(self.url, exc) from exc
        return QueueStats(ready=ready, delayed=sum(delays), reserved=self.reserved[queue])

    async def purge(self, queue: str) -> int:
        await self.declare_delays(queue)

        async def purge(channel: AbstractChannel, name: str) -> int:
            purged = await (await channel.get_underlay_channel()).queue_purge(name)
            return int(purged.message_count or 0)

        return sum(await self._spread(purge, self._names_of(queue)))

    async def _dead_queue(self, channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(self.name(DEAD_QUEUE), durable=True)

    async def publish_dead(
        self, queue: str, message: Message | None, raw: bytes, reason: str, count: int
    ) -> None:
        info = {
            "queue": queue,
            "reason": reason,
            "count": count,
            "at": time.time(),
            "id": uuid.uuid4().hex,
        }
        properties = dead_properties(message, info)
        await self._dead_queue(await self._admin_channel())
        body = message.body if message is not None else raw
        await self.send([("", self.name(DEAD_QUEUE), body, properties)])

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        await self.publish_dead(queue, None, raw, reason, 0)

    async def _all_dead(
        self,
    ) -> tuple[AbstractChannel, list[tuple[DeadLetter, AbstractIncomingMessage]]]:
        """Every dead letter, taken unacked on a channel of their own (close it to put back)."""
        channel = await self.channel()
        dead = await self._dead_queue(channel)
        found = []
        while (incoming := await dead.get(no_ack=False, fail=False)) is not None:
            found.append((dead_letter_of(incoming, self.prefix), incoming))
        return channel, found

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        channel, found = await self._all_dead()
        with contextlib.suppress(Exception):
            await channel.close()
        letters = [d for d, _ in found if queue is None or d.queue == queue]
        return letters[:limit]

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        wanted = set(ids)
        channel, found = await self._all_dead()
        done = 0
        try:
            for letter, incoming in found:
                if letter.id in wanted and letter.message is not None:
                    message = letter.message
                    await self.publish_all([Outgoing(letter.queue, message, message.priority)])
                    await incoming.ack()
                    done += 1
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return done

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        channel, found = await self._all_dead()
        done = 0
        try:
            for letter, incoming in found:
                if queue is None or letter.queue == queue:
                    await incoming.ack()
                    done += 1
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return done
