"""The operations plane on RabbitMQ: Celery 5.7's own exchanges and queues, and a revoke stream.

Events and the mailbox use exactly the entities Celery declares with its
default settings, so a declare never clashes with a Celery peer's and each
side sees the other's messages. The broker's ``prefix`` option (for tests)
goes before these names too, as before every name celeriac declares: with
it, a test's plane is its own, and Celery's tools do not see it, as they do
not see its task queues. Without it (the default) the names are Celery's
fixed ones, which ``celery inspect``, ``celery events`` and Flower use. A
``reply_to`` names the reply exchange without the prefix, as Celery does.
Names, each after the prefix ``P``:

``celeryev``, exchange (topic, durable, not auto-deleted; Celery's
    ``event_exchange``): every event, routing key ``task.succeeded`` for
    ``task-succeeded``; body the event as JSON, header ``hostname``,
    transient (delivery mode 1), as Celery's ``EventDispatcher`` publishes.
``celeryev.<uuid4>``, queue, one per events subscription, as Celery's
    ``EventReceiver`` declares it: not durable, exclusive, auto-deleted,
    ``x-message-ttl: 5000``, ``x-expires: 60000`` (``event_queue_ttl`` 5 s,
    ``event_queue_expires`` 60 s), bound with ``#``; consumed without acks.
    A body that is a list (a Celery worker's buffered ``task.multi``) gives
    one event per item. Lifetime: its subscription.
``celery.pidbox``, exchange (fanout, not durable, not auto-deleted; the
    ``kombu.pidbox.Mailbox`` of ``control_exchange``): commands, JSON,
    persistent, headers ``clock``, ``expires``, as that mailbox sends them.
``<hostname>.celery.pidbox``, queue, one per node, as
    ``kombu.pidbox.Mailbox.get_queue`` declares it: not durable, exclusive,
    auto-deleted, ``x-message-ttl: 300000``, ``x-expires: 10000``
    (``control_queue_ttl`` 300 s, ``control_queue_expires`` 10 s); consumed
    without acks. A second subscription of the same hostname on another
    connection is refused (Celery: "A node named ... is already using this
    process mailbox").
``reply.celery.pidbox``, exchange (direct, not durable): replies, transient,
    headers ``ticket``, ``clock``, as a kombu mailbox node replies.
``<oid>.reply.celery.pidbox``, queue, one per reply subscription, bound with
    routing key ``<oid>``, as ``kombu.pidbox.Mailbox.reply_queue``: not
    durable, exclusive, auto-deleted, ``x-message-ttl: 300000``,
    ``x-expires: 10000``.
`celeriac.revoked` (``REVOKED_STREAM``), stream queue (``x-queue-type:
    stream``, durable, ``x-max-age: 7D``, 1 MB segments so that the age
    limit can drop old ones): celeriac's own, no Celery peer reads it. Each
    ``store_revoked`` is one confirmed message, a JSON ``{task id: until}``.
    The first ``revoked()`` of a process starts a consumer of the stream
    from its first offset and appends a marker (an empty message with the
    header ``x-celeriac-marker``), confirmed; once the consumer reads the
    marker, everything stored before the call has been read, and the latest
    ``until`` of each id wins. The consumer then follows the stream, so
    later calls read the ids it collected, with no round trip and no
    marker; a lost channel starts it over. Markers are skipped; they cost a
    few bytes each, one per process start, and go with their segment. A stream is read
    by any number of consumers without taking anything away, and outlives
    every connection. Lifetime: a message at least 7 days (a revoke whose
    ``until`` is later may be forgotten after that).

Publishing: one confirm channel for the plane. A ``send_events`` batch is
published at once and its confirms are awaited together, at most
``EVENT_WINDOW`` events in flight, so a slow RabbitMQ slows the caller's
flush (whose buffer is bounded) and never grows a buffer here. Commands,
replies and revokes are confirmed too. A header that is a float (``expires``)
also travels exactly in ``x-celeriac-headers`` (JSON), since pamqp sends
floats as 32-bit; Celery ignores the extra header and reads the rounded one.

Subscriptions each have a channel of their own on the broker's connection.
One whose channel closes under it (the connection was lost) raises
``BrokerError`` from ``get`` once what arrived is read: subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from ..brokers.operations import (
    EVENT_EXCHANGE,
    MAILBOX_EXCHANGE,
    REPLY_EXCHANGE,
    Operations,
    Received,
    Subscription,
    event_messages,
)
from ..errors import BrokerError, SerializationError
from ..serialization import json_dumps, json_loads
from .wire import HEADERS_HEADER, Send, properties_class, publish_confirmed

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

__all__ = ["AmqpOperations", "Channels"]

logger = logging.getLogger("celeriac.broker.amqp")

EVENT_QUEUE_ARGUMENTS: dict[str, Any] = {"x-message-ttl": 5000, "x-expires": 60000}
"""Celery's ``event_queue_ttl`` (5 s) and ``event_queue_expires`` (60 s), in ms."""
MAILBOX_QUEUE_ARGUMENTS: dict[str, Any] = {"x-message-ttl": 300000, "x-expires": 10000}
"""Celery's ``control_queue_ttl`` (300 s) and ``control_queue_expires`` (10 s), in ms:
the node queue and the reply queue both."""
REVOKED_STREAM = "celeriac.revoked"
REVOKED_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "stream",
    "x-max-age": "7D",
    "x-stream-max-segment-size-bytes": 1_000_000,
}
MARKER_HEADER = "x-celeriac-marker"
EVENT_WINDOW = 256
"""Most events published before their confirms are awaited."""
READ_PREFETCH = 1000
"""Stream messages RabbitMQ sends ahead while ``revoked()`` reads."""
READ_TIMEOUT = 30.0
"""Longest ``revoked()`` waits for the stream to reach its marker."""
EXCHANGE_TYPES = {EVENT_EXCHANGE: "topic", MAILBOX_EXCHANGE: "fanout"}
"""Celery's exchange types; any other (a reply exchange) is direct."""
JSON = "application/json"
_TRANSIENT, _PERSISTENT = 1, 2


class Channels(Protocol):
    """What the plane uses of its broker (``AmqpBroker`` is one)."""

    def name(self, queue: str) -> str:
        """The AMQP name of celeriac's own ``queue`` (with the broker's prefix)."""

    async def channel(self, *, confirms: bool = False) -> AbstractChannel:
        """A new channel on the broker's connection."""


Sent = tuple[str, bytes, Mapping[str, Any], int]
"""One message for ``AmqpOperations._publish``: routing key, body, headers, delivery mode."""


def _send(exchange: str, key: str, body: bytes, headers: Mapping[str, Any], mode: int) -> Send:
    """One publish with Celery's properties: JSON, UTF-8, ``headers``, ``mode``."""
    sent = dict(headers)
    if any(isinstance(v, float) for v in sent.values()):
        sent[HEADERS_HEADER] = orjson.dumps(dict(headers)).decode()
    properties = properties_class()(
        headers=sent,
        content_type=JSON,
        content_encoding="utf-8",
        delivery_mode=mode,
        priority=0,
    )
    return exchange, key, body, properties


def _hostname(body: dict[str, Any] | list[dict[str, Any]]) -> Any:
    """The ``hostname`` header of an event message (a ``task.multi`` list: its first's)."""
    return (body[0] if isinstance(body, list) else body).get("hostname")


def _headers(incoming: AbstractIncomingMessage) -> dict[str, Any]:
    raw = dict(incoming.headers or {})
    exact = raw.pop(HEADERS_HEADER, None)
    if exact is not None:
        headers: dict[str, Any] = orjson.loads(str(exact))
        return headers
    return raw


def _decode(incoming: AbstractIncomingMessage) -> list[Received]:
    """The message as received items (a list body: one per item); [] if not JSON."""
    try:
        if (incoming.content_type or JSON) != JSON:
            raise SerializationError(f"content type {incoming.content_type!r} is not JSON")
        body = json_loads(incoming.body)
    except (SerializationError, ValueError) as exc:
        logger.warning("ignored a message from %s: %s", incoming.exchange or "RabbitMQ", exc)
        return []
    headers = _headers(incoming)
    items = body if isinstance(body, list) else [body]
    return [Received(item, headers) for item in items if isinstance(item, dict)]


class _Consuming(Subscription):
    """A queue consumed on a channel of its own; the channel closing under it is a loss."""

    def __init__(self, channel: AbstractChannel):
        self._channel = channel
        self._queue: asyncio.Queue[Received | None] = asyncio.Queue()
        self._closed = False
        self._lost: BaseException | None = None
        channel.close_callbacks.add(self._on_channel_close)

    def _on_channel_close(self, _: Any, exc: BaseException | None = None) -> None:
        if not self._closed:
            self._lost = exc or BrokerError("the channel closed")
            self._queue.put_nowait(None)

    async def on_message(self, incoming: AbstractIncomingMessage) -> None:
        if not self._closed:
            for received in _decode(incoming):
                self._queue.put_nowait(received)

    async def get(self, timeout: float) -> Received | None:
        if self._closed:
            await asyncio.sleep(timeout)
            return None
        try:
            received = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if received is None:
            self._queue.put_nowait(None)  # every later get fails too
            raise BrokerError(f"lost the subscription's channel to RabbitMQ: {self._lost!r}")
        return received

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # closing the channel cancels the consumer:
            await self._channel.close()  # the auto-delete queue goes with it


class _RevokeFollower:
    """Reads the revoke stream from its first offset, then follows it while its channel
    lives: a process's later ``revoked()`` calls cost no round trip and write nothing.

    Caught up once it has read a marker it appended after it began to read.
    """

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}
        self._channel: AbstractChannel | None = None
        self._marker = uuid.uuid4().hex
        self._caught_up = asyncio.Event()

    @property
    def alive(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def start(
        self, broker: Channels, append: Callable[[bytes, Mapping[str, Any]], Awaitable[str]]
    ) -> None:
        stream = broker.name(REVOKED_STREAM)
        try:
            await self._consume(broker, stream)
            await append(b"{}", {MARKER_HEADER: self._marker})
            async with asyncio.timeout(READ_TIMEOUT):
                await self._caught_up.wait()
        except TimeoutError as exc:
            raise BrokerError(f"the revoke stream {stream} did not reach its end") from exc
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"RabbitMQ refused to read the revoke stream: {exc}") from exc

    async def _consume(self, broker: Channels, stream: str) -> None:
        """Consume ``stream`` from its first offset. A stream declared a moment ago may
        not be up yet (RabbitMQ: "does not have a replica on the local node"): tried
        again, for up to ``READ_TIMEOUT``."""
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            self._channel = await broker.channel()
            try:
                await self._channel.set_qos(prefetch_count=READ_PREFETCH)
                queue = await self._channel.declare_queue(
                    stream, durable=True, arguments=REVOKED_ARGUMENTS
                )
                await queue.consume(self._on_message, arguments={"x-stream-offset": "first"})
                return
            except Exception as exc:
                if "replica" not in str(exc) or time.monotonic() > deadline:
                    raise
                await self.close()
                await asyncio.sleep(0.05)

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        await incoming.ack()
        if (incoming.headers or {}).get(MARKER_HEADER) == self._marker:
            self._caught_up.set()
            return
        with contextlib.suppress(ValueError, AttributeError):
            for task_id, until in orjson.loads(incoming.body).items():
                self.latest[task_id] = max(float(until), self.latest.get(task_id, 0.0))

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


class AmqpOperations(Operations):
    """Celery's events and mailbox, and a revoke stream, on one broker's connection."""

    def __init__(self, broker: Channels):
        self._broker = broker
        self._publisher: AbstractChannel | None = None
        self._declared: set[str] = set()
        """Exchanges and the stream declared on the publisher channel."""
        self._lock = asyncio.Lock()
        self._subscriptions: weakref.WeakSet[_Consuming] = weakref.WeakSet()
        self._follower: _RevokeFollower | None = None

    # -- publishing ------------------------------------------------------------
    async def _channel(self) -> AbstractChannel:
        if self._publisher is None or self._publisher.is_closed:
            self._publisher = await self._broker.channel(confirms=True)
            self._declared.clear()
        return self._publisher

    async def _exchange(self, channel: AbstractChannel, exchange: str) -> str:
        """Declare Celery's ``exchange`` (prefixed) with Celery's type and flags; its
        AMQP name."""
        name = self._broker.name(exchange)
        kind = EXCHANGE_TYPES.get(exchange, "direct")
        await channel.declare_exchange(name, kind, durable=exchange == EVENT_EXCHANGE)
        return name

    async def _stream(self, channel: AbstractChannel) -> str:
        name = self._broker.name(REVOKED_STREAM)
        if name not in self._declared:
            await channel.declare_queue(name, durable=True, arguments=REVOKED_ARGUMENTS)
            self._declared.add(name)
        return name

    async def _publish(self, exchange: str, messages: Sequence[Sent]) -> None:
        """Publish ``messages`` to Celery's ``exchange`` (declared once per channel) at
        once, then await their confirms."""
        try:
            async with self._lock:
                channel = await self._channel()
                name = self._broker.name(exchange)
                if name not in self._declared:
                    await self._exchange(channel, exchange)
                    self._declared.add(name)
                sends = [_send(name, *message) for message in messages]
                await publish_confirmed(channel, sends)
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"RabbitMQ refused an operations message: {exc}") from exc

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        messages = [
            (key, json_dumps(body), {"hostname": _hostname(body)}, _TRANSIENT)
            for key, body in event_messages(events)
        ]
        for start in range(0, len(messages), EVENT_WINDOW):
            await self._publish(EVENT_EXCHANGE, messages[start : start + EVENT_WINDOW])

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        body = json_dumps(dict(command))
        await self._publish(MAILBOX_EXCHANGE, [("", body, headers, _PERSISTENT)])

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        exchange = str(reply_to.get("exchange") or REPLY_EXCHANGE)
        key = str(reply_to.get("routing_key") or "")
        await self._publish(exchange, [(key, json_dumps(dict(reply)), headers, _TRANSIENT)])

    # -- subscribing -----------------------------------------------------------
    async def _subscribe(
        self, queue: str, exchange: str, key: str, arguments: dict[str, Any]
    ) -> Subscription:
        """Declare ``queue`` (prefixed; not durable, exclusive, auto-delete) bound to
        Celery's ``exchange`` on a channel of its own, and consume it without acks."""
        channel = await self._broker.channel()
        subscription = _Consuming(channel)
        name = self._broker.name(queue)
        try:
            bound_to = await self._exchange(channel, exchange)
            declared = await channel.declare_queue(
                name, durable=False, exclusive=True, auto_delete=True, arguments=arguments
            )
            await declared.bind(bound_to, routing_key=key)
            await declared.consume(subscription.on_message, no_ack=True)
        except Exception as exc:
            await subscription.close()
            if "RESOURCE_LOCKED" in str(exc):
                raise BrokerError(
                    f"{name} is in use by another connection: is a node of that name "
                    "running already? Give each node a unique name."
                ) from exc
            raise BrokerError(f"RabbitMQ refused to declare {name}: {exc}") from exc
        self._subscriptions.add(subscription)
        return subscription

    async def subscribe_events(self) -> Subscription:
        queue = f"{EVENT_EXCHANGE}.{uuid.uuid4()}"
        return await self._subscribe(queue, EVENT_EXCHANGE, "#", EVENT_QUEUE_ARGUMENTS)

    async def subscribe_commands(self, hostname: str) -> Subscription:
        queue = f"{hostname}.{MAILBOX_EXCHANGE}"
        return await self._subscribe(queue, MAILBOX_EXCHANGE, "", MAILBOX_QUEUE_ARGUMENTS)

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        queue = f"{routing_key}.{REPLY_EXCHANGE}"
        return await self._subscribe(queue, REPLY_EXCHANGE, routing_key, MAILBOX_QUEUE_ARGUMENTS)

    # -- revokes ---------------------------------------------------------------
    async def _to_stream(self, body: bytes, headers: Mapping[str, Any]) -> str:
        """Append one message to the revoke stream, confirmed; the stream's name."""
        try:
            async with self._lock:
                channel = await self._channel()
                stream = await self._stream(channel)
                await publish_confirmed(channel, [_send("", stream, body, headers, _PERSISTENT)])
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"RabbitMQ refused a revoke: {exc}") from exc
        return stream

    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        if revoked:
            await self._to_stream(orjson.dumps(dict(revoked)), {})

    async def revoked(self) -> dict[str, float]:
        follower = self._follower
        if follower is None or not follower.alive:
            if follower is not None:
                await follower.close()
            follower = self._follower = _RevokeFollower()
            try:
                await follower.start(self._broker, self._to_stream)
            except BaseException:
                await follower.close()
                self._follower = None
                raise
        now = time.time()
        return {task_id: until for task_id, until in follower.latest.items() if until > now}

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.close()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
