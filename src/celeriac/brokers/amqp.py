"""The RabbitMQ broker (``amqp://``, ``amqps://``) on aio-pika.

URL: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS, with
``?cafile=...`` and the other ``DRIVER_OPTIONS``; the default vhost ``/`` is
written ``//`` or left out, as in kombu). Options, in
``broker_transport_options`` or the URL's query (which wins):
``queue_type="quorum"`` (quorum queues; default classic), ``prefix="t1."``
(put before every name celeriac declares; for tests), ``plain_queues``
(queues declared exactly as Celery declares them; default ``celery``; a list,
or ``a,b`` in the query).
Needs RabbitMQ 3.10+ and ``pip install 'celeriac[amqp]'``.

Names (``P`` = the prefix, empty by default; ``N`` = ``DELAY_LEVELS``):

``P<queue>``, queue, durable: the task queue, bound to exchange ``P<queue>``
    (direct, durable) with routing key ``<queue>``, as Celery's autoexchange
    declares it (for ``celery``: exchange ``celery``, routing key ``celery``).
    Arguments: none for the *plain* queues (``celery`` unless configured), so
    Celery peers declare the same queue without PRECONDITION_FAILED; otherwise
    ``x-max-priority: 10`` (classic) or ``x-queue-type: quorum`` with
    ``x-delivery-limit`` (quorum). A queue that already exists is used as it
    is, whoever declared it (a passive declare comes first). Messages are
    published to the default exchange with the queue's name as routing key.
    Lifetime: as long as RabbitMQ keeps it (durable).
``Pceleriac.delay.<i>``, exchange (topic, durable), ``i`` in ``0..N-1``: the
    delay ladder. A message due in ``d`` ms is published to level ``N-1`` with
    the routing key ``b(N-1). ... .b(0).<queue>`` (``d`` in binary, highest
    bit first). Level ``i`` routes ``...1...`` (bit ``i`` set) to the queue
    ``Pceleriac.delay.<queue>.<i>`` and ``...0...`` on to level ``i-1``.
``Pceleriac.delay.<queue>.<i>``, queue, durable, ``x-message-ttl: 2**i`` ms,
    dead-lettering into level ``i-1`` (level 0: into
    ``Pceleriac.delay.deliver``). Every message in it has the same TTL, so it
    expires in order and never waits behind a longer one. Lifetime: durable;
    a message stays at most ``2**i`` ms.
``Pceleriac.delay.deliver``, exchange (topic, durable): routes a message that
    climbed down the ladder to ``P<queue>`` by the routing key's last word.
``Pceleriac.dead``, queue, durable, no TTL: dead letters of every queue; each
    carries ``x-celeriac-dead`` (queue, reason, count, time, id). Lifetime:
    until requeued or purged.

Headers celeriac adds (and removes again before a message is handed out):
``x-celeriac-deliveries`` (the delivery count the next delivery reports;
absent: 1), ``x-celeriac-not-before`` (UNIX time in ms; a message that arrives
earlier, e.g. beyond the ladder's range, goes round again),
``x-celeriac-properties`` (JSON of properties AMQP has no field for),
``x-celeriac-headers`` (JSON of the headers when a float in them would lose
precision: pamqp encodes floats as 32-bit). RabbitMQ's
``x-death``, ``x-first-death-*``, ``x-last-death-*`` and ``x-delivery-count``
are removed too.

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
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson

from ..errors import BrokerError, BrokerUnavailable, ConfigurationError, MessageError
from ..protocol import Message, Outgoing, parse_timestamp
from .base import Broker, BrokerOptions, Consumer, DeadLetter, Delivery, QueueStats, redact_url

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractIncomingMessage,
        AbstractQueue,
    )
    from pamqp.commands import Basic

__all__ = ["AmqpBroker", "AmqpConsumer"]

T = TypeVar("T")
Send = tuple[str, str, bytes, "Basic.Properties"]
"""One publish: exchange, routing key, body, properties."""
A = TypeVar("A")

DELAY_LEVELS = 32
"""Rungs of the delay ladder: delays up to 2**32 ms (49.7 days) in one pass."""
DELAY_PREFIX = "celeriac.delay."
DEAD_QUEUE = "celeriac.dead"
MAX_PRIORITY = 10
POOL_CHANNELS = 8
"""Channels that declare and count a queue's delay queues at once."""
COUNT_HEADER = "x-celeriac-deliveries"
NOT_BEFORE_HEADER = "x-celeriac-not-before"
PROPERTIES_HEADER = "x-celeriac-properties"
DEAD_HEADER = "x-celeriac-dead"
HEADERS_HEADER = "x-celeriac-headers"
"""JSON of the headers, sent too when AMQP would round a float (pamqp sends 32-bit floats)."""
_NATIVE_PROPERTIES = frozenset({"correlation_id", "reply_to", "priority", "delivery_mode"})
_RABBIT_HEADERS = ("x-death", "x-delivery-count")
_RABBIT_PREFIXES = ("x-first-death-", "x-last-death-", "x-celeriac-")
START_HINT = "start it with `rabbitmq-server -detached` (or `docker run -p 5672:5672 rabbitmq`)"


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the amqp:// broker needs aio-pika: pip install 'celeriac[amqp]'"
        ) from exc
    return aio_pika


def _properties() -> type[Basic.Properties]:
    _aio_pika()  # the friendly error if the driver is missing
    from pamqp.commands import Basic

    return Basic.Properties


DRIVER_OPTIONS = frozenset(
    {"heartbeat", "connection_timeout", "cafile", "capath", "certfile", "keyfile", "no_verify_ssl"}
)
"""URL options passed on to aio-pika: heartbeat, and TLS (``amqps://``): the CA to
trust (``cafile``, ``capath``), a client certificate (``certfile``, ``keyfile``),
``no_verify_ssl=1`` (not for production)."""


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL aio-pika understands (kombu's ``//`` vhost fixed) and celeriac's options."""
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path
    if path in ("", "/", "//"):
        path = "/"
    elif path.startswith("//"):
        path = "/" + path[2:].replace("/", "%2F")
    scheme = "amqps" if parts.scheme == "amqps" else "amqp"
    driver_query = urlencode({k: v for k, v in options.items() if k in DRIVER_OPTIONS})
    return urlunsplit((scheme, parts.netloc, path, driver_query, "")), options


async def open_connection(driver_url: str, timeout: float = 5.0) -> AbstractConnection:
    """aio-pika's ``connect``, closing what it opened when it fails: a failed
    connection left to the garbage collector schedules its close on a loop that
    may never run again."""
    import yarl

    connection: AbstractConnection = _aio_pika().Connection(yarl.URL(driver_url))
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"cannot reach RabbitMQ at {redact_url(url)} ({exc}); {START_HINT}")


def delay_routing_key(delay_ms: int, queue: str) -> str:
    bits = ".".join(str((delay_ms >> i) & 1) for i in reversed(range(DELAY_LEVELS)))
    return f"{bits}.{queue}"


def _lossy(value: Any) -> bool:
    """True if AMQP's field table would not give ``value`` back exactly."""
    if isinstance(value, float):
        rounded: float = struct.unpack("f", struct.pack("f", value))[0]
        return rounded != value
    if isinstance(value, dict):
        return any(_lossy(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_lossy(v) for v in value)
    return False


def _is_ours(name: str) -> bool:
    return name in _RABBIT_HEADERS or name.startswith(_RABBIT_PREFIXES)


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
            self._ladder = False
            self._publisher = self._admin = None
            self._pool = []
            try:
                self._connection = await open_connection(self._driver_url)
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
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

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
        channel = await self._admin_channel()
        if not exists:
            await channel.declare_queue(name, durable=True, arguments=self.queue_arguments(queue))
        exchange = await channel.declare_exchange(name, "direct", durable=True)
        amqp_queue = await channel.get_queue(name, ensure=False)
        await amqp_queue.bind(exchange, routing_key=queue)
        self._declared.add(queue)
        await self.declare_delays(queue)

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
        """``call(channel, item)`` for each item, over a few channels at once.

        AMQP methods are sequential per channel; eight lanes make 33 declares
        cost about five round trips.
        """
        while len(self._pool) < POOL_CHANNELS:
            self._pool.append(await self.channel())
        for i, channel in enumerate(self._pool):
            if channel.is_closed:
                self._pool[i] = await self.channel()
        results: list[T | None] = [None] * len(items)

        async def run(lane: int) -> None:
            channel = self._pool[lane]
            for index in range(lane, len(items), POOL_CHANNELS):
                results[index] = await call(channel, items[index])

        await asyncio.gather(*(run(lane) for lane in range(POOL_CHANNELS)))
        return results  # type: ignore[return-value]

    # -- publishing ------------------------------------------------------------
    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        try:
            await self._publish_all(batch)
        except BrokerError:
            raise
        except Exception as exc:
            if not self._alive():
                raise unavailable(self.url, exc) from exc
            raise BrokerError(
                f"RabbitMQ at {redact_url(self.url)} refused a publish: {exc}"
            ) from exc

    async def _publish_all(
        self, batch: Sequence[Outgoing], count: dict[int, int] | None = None
    ) -> None:
        now = time.time()
        for o in batch:
            if o.not_before is not None and o.not_before > now:
                await self.declare_delays(o.queue)
            else:
                await self.declare(o.queue)
        sends: list[Send] = []
        top = self.name(f"{DELAY_PREFIX}{DELAY_LEVELS - 1}")
        for i, o in enumerate(batch):
            n = count.get(i, 1) if count else 1
            properties = self.to_amqp(o.message, o.priority, n, o.not_before)
            if o.not_before is not None and o.not_before > now:
                delay_ms = min(math.ceil((o.not_before - now) * 1000), 2**DELAY_LEVELS - 1)
                key = delay_routing_key(delay_ms, o.queue)
                sends.append((top, key, o.message.body, properties))
            else:
                sends.append(("", self.name(o.queue), o.message.body, properties))
        await self.send(sends)

    async def send(self, sends: Sequence[Send]) -> None:
        """Publish every ``(exchange, routing key, body, properties)``, then await all confirms."""
        channel = await (await self._publish_channel()).get_underlay_channel()
        results = await asyncio.gather(
            *(
                channel.basic_publish(body, exchange=exchange, routing_key=key, properties=props)
                for exchange, key, body, props in sends
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if type(result).__name__ != "Ack":
                raise BrokerError(f"RabbitMQ did not confirm a publish: {result!r}")

    def to_amqp(
        self, message: Message, priority: int, count: int, not_before: float | None
    ) -> Basic.Properties:
        """The AMQP properties (headers included) that carry ``message`` unchanged."""
        headers: dict[str, Any] = dict(message.headers)
        props = message.properties
        if count != 1:
            headers[COUNT_HEADER] = count
        if not_before is not None:
            headers[NOT_BEFORE_HEADER] = math.ceil(not_before * 1000)
        if _lossy(message.headers):
            headers[HEADERS_HEADER] = orjson.dumps(dict(message.headers)).decode()
        if not props.keys() <= _NATIVE_PROPERTIES or props.get("delivery_mode") != 2:
            headers[PROPERTIES_HEADER] = orjson.dumps(dict(props)).decode()
        reply_to = props.get("reply_to")
        correlation_id = props.get("correlation_id")
        built: Basic.Properties = _properties()(
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=2,
            priority=priority,
            correlation_id=str(correlation_id) if correlation_id is not None else None,
            reply_to=str(reply_to) if reply_to is not None else None,
        )
        return built

    @staticmethod
    def from_amqp(incoming: AbstractIncomingMessage) -> tuple[Message, dict[str, Any]]:
        """The celeriac message, and celeriac's/RabbitMQ's own headers apart."""
        raw = dict(incoming.headers or {})
        ours = {k: v for k, v in raw.items() if _is_ours(k)}
        exact = ours.get(HEADERS_HEADER)
        if exact is not None:
            headers: dict[str, Any] = orjson.loads(str(exact))
        else:
            headers = {k: v for k, v in raw.items() if not _is_ours(k)}
        packed = ours.get(PROPERTIES_HEADER)
        if packed is not None:
            properties: dict[str, Any] = orjson.loads(str(packed))
        else:
            properties = {
                "correlation_id": incoming.correlation_id,
                "reply_to": incoming.reply_to or "",
                "delivery_mode": int(incoming.delivery_mode or 2),
                "priority": incoming.priority or 0,
            }
        message = Message(
            headers,
            incoming.body,
            incoming.content_type or "application/json",
            incoming.content_encoding or "utf-8",
            properties,
        )
        return message, ours

    # -- consuming -------------------------------------------------------------
    def consumer(self, queues: Sequence[str], name: str) -> AmqpConsumer:
        return AmqpConsumer(self, queues, name)

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
        try:
            await self.declare_delays(queue)
            ready, *delays = await self._spread(self._count, self._names_of(queue))
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
        if message is not None:
            properties = self.to_amqp(message, message.priority, 1, None)
        else:
            properties = _properties()(headers={}, delivery_mode=2)
        assert properties.headers is not None
        properties.headers[DEAD_HEADER] = orjson.dumps({**info, "raw": message is None}).decode()
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
            found.append((self._dead_letter_of(incoming), incoming))
        return channel, found

    def _dead_letter_of(self, incoming: AbstractIncomingMessage) -> DeadLetter:
        message, ours = self.from_amqp(incoming)
        packed = ours.get(DEAD_HEADER)
        info: dict[str, Any] = orjson.loads(str(packed)) if packed else {}
        if not info:  # dead-lettered by RabbitMQ itself (quorum delivery limit)
            queue = str(incoming.headers.get("x-first-death-queue", "")).removeprefix(self.prefix)
            info = {"queue": queue, "reason": "delivery limit", "count": 0, "at": 0.0}
            info["id"] = incoming.message_id or str(message.headers.get("id", ""))
        return DeadLetter(
            id=str(info["id"]),
            queue=str(info["queue"]),
            message=None if info.get("raw") else message,
            raw=incoming.body,
            reason=str(info["reason"]),
            delivery_count=int(info["count"]),
            dead_at=float(info["at"]),
        )

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
                    await self._publish_all([Outgoing(letter.queue, message, message.priority)])
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


class AmqpConsumer(Consumer):
    """Deliveries pushed by ``basic_consume`` into a buffer; prefetch follows ``limit``."""

    broker: AmqpBroker

    def __init__(self, broker: AmqpBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._channel: AbstractChannel | None = None
        self._buffer: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        self._prefetch = 0
        self._unacked: dict[int, str] = {}
        """id(incoming message) -> queue, for every unacked delivery on the channel."""
        self._tags: dict[str, str] = {}
        """consumer tag -> queue ("" once cancelled)."""
        self._cancelled: dict[str, str] = {}
        self._global_qos = broker.queue_type == "classic"
        """Quorum queues refuse a channel-wide prefetch; theirs is per consumer."""

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        tag = incoming.consumer_tag or ""
        queue = self._tags.get(tag) or self._cancelled.get(tag) or self.queues[0]
        self._unacked[id(incoming)] = queue
        self.broker.reserved[queue] += 1
        self._buffer.append(incoming)
        self._arrived.set()

    def _queue_of(self, incoming: AbstractIncomingMessage) -> str:
        return self._unacked.get(id(incoming)) or self.queues[0]

    async def _open(self, limit: int) -> AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        if self._channel is not None:
            self._forget_channel()
            raise BrokerError(f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}")
        try:
            for queue in self.queues:
                await self.broker.declare(queue)
            channel = await self.broker.channel()
            await channel.set_qos(prefetch_count=limit, global_=self._global_qos)
            self._prefetch = limit
            channel.close_callbacks.add(lambda *_: self._arrived.set())
            await self._consume(channel)
        except BrokerError:
            raise
        except Exception as exc:
            raise unavailable(self.broker.url, exc) from exc
        self._channel = channel
        return channel

    async def _consume(self, channel: AbstractChannel) -> None:
        """(Re)start consuming every queue; old tags stay known for deliveries in flight."""
        raw = await channel.get_underlay_channel()
        for tag, queue in list(self._tags.items()):
            if queue:
                await raw.basic_cancel(tag)
                self._tags[tag] = ""  # cancelled; its in-flight deliveries still map below
                self._cancelled[tag] = queue
        for queue in self.queues:
            amqp_queue = await channel.get_queue(self.broker.name(queue), ensure=False)
            self._tags[await amqp_queue.consume(self._on_message)] = queue

    def _forget_channel(self) -> None:
        """RabbitMQ put back everything unacked on a closed channel: forget it."""
        for queue in self._unacked.values():
            self.broker.reserved[queue] -= 1
        self._unacked.clear()
        self._buffer.clear()
        self._tags.clear()
        self._cancelled.clear()
        self._channel = None

    async def _fetch(self, limit: int, timeout: float) -> list[Delivery]:
        try:
            fresh = self._channel is None
            channel = await self._open(limit)
            want = len(self._unacked) - len(self._buffer) + limit
            fresh = fresh or want > self._prefetch
            if want > self._prefetch:
                await channel.set_qos(prefetch_count=want, global_=self._global_qos)
                self._prefetch = want
                if not self._global_qos:  # a per-consumer limit binds new consumers only
                    await self._consume(channel)
            return await self._take(limit, timeout, settle=fresh)
        except BrokerError:
            raise
        except Exception as exc:
            self._forget_channel()
            raise BrokerError(f"RabbitMQ at {redact_url(self.broker.url)}: {exc}") from exc

    async def _take(self, limit: int, timeout: float, *, settle: bool) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while not out:
            if not self._buffer:
                if self._channel is None or self._channel.is_closed:
                    raise BrokerError(
                        f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}"
                    )
                self._arrived.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    return out
            if settle:  # prefetch just grew: let the burst land, in priority order
                settle = False
                await self._settle_burst(limit)
            while self._buffer and len(out) < limit:
                delivery = await self._admit(self._buffer.popleft())
                if delivery is not None:
                    out.append(delivery)
        return out

    async def _settle_burst(self, limit: int) -> None:
        """Wait while deliveries keep landing (a few ms), up to ``limit`` of them."""
        for _ in range(10):
            before = len(self._buffer)
            if before >= limit:
                return
            await asyncio.sleep(0.003)
            if len(self._buffer) == before:
                return

    @staticmethod
    def _due(message: Message, ours: dict[str, Any]) -> float | None:
        """When the message may run: our header, else the ``eta`` a Celery client sent.

        Celery clients publish eta/countdown tasks straight into the queue (a
        Celery worker holds them in memory); here they go into the ladder.
        """
        not_before = ours.get(NOT_BEFORE_HEADER)
        if isinstance(not_before, int):
            return not_before / 1000
        eta = message.headers.get("eta")
        if eta is None:
            return None
        with contextlib.suppress(MessageError):  # the worker rejects a malformed eta
            return parse_timestamp(eta)
        return None

    async def _admit(self, incoming: AbstractIncomingMessage) -> Delivery | None:
        message, ours = self.broker.from_amqp(incoming)
        queue = self._queue_of(incoming)
        count = int(ours.get(COUNT_HEADER, 1))
        if "x-delivery-count" in ours:  # quorum: RabbitMQ counts returned deliveries
            count += int(ours["x-delivery-count"])
            return Delivery(message, queue, count, incoming)
        due = self._due(message, ours)
        if due is not None and due > time.time():
            await self._republish(incoming, message, queue, count, due)
            return None
        if incoming.redelivered:
            count += 1
            if count <= self.options.max_deliveries:
                await self._republish(incoming, message, queue, count, None)
                return None
        return Delivery(message, queue, count, incoming)

    async def _republish(
        self,
        incoming: AbstractIncomingMessage,
        message: Message,
        queue: str,
        count: int,
        not_before: float | None,
    ) -> None:
        outgoing = Outgoing(queue, message, message.priority, not_before)
        await self.broker._publish_all([outgoing], {0: count})
        await self._settle(incoming)

    async def _settle(self, incoming: AbstractIncomingMessage) -> None:
        queue = self._unacked.pop(id(incoming), None)
        if queue is None:
            return  # its channel is gone: RabbitMQ has put it back already
        self.broker.reserved[queue] -= 1
        with contextlib.suppress(Exception):
            await incoming.ack()

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            await self._settle(d.tag)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        live = [d for d in deliveries if id(d.tag) in self._unacked]
        if not live:
            return
        batch = [Outgoing(d.queue, d.message, d.message.priority, not_before) for d in live]
        counts = {
            i: d.delivery_count if uncount else d.delivery_count + 1 for i, d in enumerate(live)
        }
        await self.broker._publish_all(batch, counts)
        for d in live:
            await self._settle(d.tag)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        message = delivery.message
        await self.broker.publish_dead(
            delivery.queue, message, b"", reason, delivery.delivery_count
        )
        await self._settle(delivery.tag)

    async def _heartbeat(self) -> None:
        """Leases need no renewal (unacked deliveries stay ours); check the channel."""
        if self._channel is not None and self._channel.is_closed:
            raise BrokerError(f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}")

    def abandon(self) -> None:
        """Die as a worker would: the channel closes after ``lease_timeout``, returning all."""
        super().abandon()
        channel, self._channel = self._channel, None
        if channel is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.options.lease_timeout, lambda: loop.create_task(_close(channel)))
        for queue in self._unacked.values():
            self.broker.reserved[queue] -= 1
        self._unacked.clear()
        self._buffer.clear()

    async def close(self) -> None:
        """Stop the deliveries first, so what is handed back cannot come straight back."""
        channel = self._channel
        if channel is not None and not channel.is_closed and not self._closed:
            with contextlib.suppress(Exception):
                for tag, queue in list(self._tags.items()):
                    if queue:
                        await (await channel.get_underlay_channel()).basic_cancel(tag)
        await super().close()

    async def _close(self) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            self._forget_channel()
            return
        # Deliveries that arrived but were never handed out go back uncounted.
        with contextlib.suppress(Exception):
            buffered = list(self._buffer)
            self._buffer.clear()
            for incoming in buffered:
                message, ours = self.broker.from_amqp(incoming)
                queue = self._queue_of(incoming)
                count = int(ours.get(COUNT_HEADER, 1))
                await self._republish(incoming, message, queue, count, None)
        with contextlib.suppress(Exception):
            await channel.close()
        self._forget_channel()


async def _close(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        await channel.close()
