"""How celeriac speaks AMQP: URLs, connections, and messages as AMQP properties.

Shared by the broker (``broker.py``, ``consumer.py``) and the rpc result store
(``rpc.py``); it imports aio-pika only when a connection is opened.

A celeriac ``Message`` travels with its protocol v2 headers as AMQP headers,
and its properties as AMQP properties, so Celery peers read it unchanged.
What AMQP cannot carry exactly travels beside it in ``x-celeriac-*`` headers
(removed again on arrival): floats that pamqp would round to 32 bits
(``HEADERS_HEADER``, the headers as JSON), properties beyond AMQP's own
(``PROPERTIES_HEADER``), the delivery count of a classic queue
(``COUNT_HEADER``) and a delayed message's due time (``NOT_BEFORE_HEADER``).
A dead letter carries where it died in ``DEAD_HEADER``. A message routed
through an exchange names it in its ``delivery_info`` property (kombu's
place; see ``route_of``), which is not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson

from ..brokers.base import DeadLetter
from ..errors import BrokerError, BrokerUnavailable, ConfigurationError
from ..protocol import Message
from ..url_schemes import redact_url

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
    from pamqp.commands import Basic

__all__ = [
    "Binding",
    "COUNT_HEADER",
    "Send",
    "DEAD_HEADER",
    "NOT_BEFORE_HEADER",
    "START_HINT",
    "dead_letter_of",
    "dead_properties",
    "from_incoming",
    "open_connection",
    "properties_class",
    "publish_confirmed",
    "route_of",
    "split_url",
    "spread",
    "to_properties",
    "unavailable",
]

COUNT_HEADER = "x-celeriac-deliveries"
NOT_BEFORE_HEADER = "x-celeriac-not-before"
PROPERTIES_HEADER = "x-celeriac-properties"
DEAD_HEADER = "x-celeriac-dead"
HEADERS_HEADER = "x-celeriac-headers"
"""JSON of the headers, sent too when AMQP would round a float (pamqp sends 32-bit floats)."""
_NATIVE_PROPERTIES = frozenset({"correlation_id", "reply_to", "priority", "delivery_mode"})
_RABBIT_HEADERS = ("x-death", "x-delivery-count")
_RABBIT_PREFIXES = ("x-first-death-", "x-last-death-", "x-celeriac-")
T = TypeVar("T")
A = TypeVar("A")
Send = tuple[str, str, bytes, "Basic.Properties"]
"""One publish: exchange, routing key, body, properties."""
START_HINT = "start it with `rabbitmq-server -detached` (or `docker run -p 5672:5672 rabbitmq`)"


def _aio_pika() -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the amqp:// broker needs aio-pika: pip install 'celeriac[amqp]'"
        ) from exc
    return aio_pika


def properties_class() -> type[Basic.Properties]:
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


async def open_connection(driver_url: str, timeout: float = 4.0) -> AbstractConnection:
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


@dataclass(frozen=True, slots=True)
class Binding:
    """An exchange, its type, and a routing key: how a queue is bound, or where a
    message is published."""

    exchange: str
    type: str
    routing_key: str
    auto_delete: bool = False

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Binding:
        kind = str(spec.get("type") or "direct")
        if kind not in ("direct", "topic", "fanout"):
            raise ConfigurationError(f"exchange type must be direct, topic or fanout: {kind!r}")
        return cls(
            str(spec["exchange"]),
            kind,
            str(spec.get("routing_key") or ""),
            bool(spec.get("auto_delete")),
        )


def route_of(message: Message) -> Binding | None:
    """The exchange and routing key a message's ``delivery_info`` names, if any."""
    info = message.properties.get("delivery_info")
    if not isinstance(info, Mapping) or not info.get("exchange"):
        return None
    return Binding.of({**info, "type": info.get("exchange_type")})


def to_properties(
    message: Message, priority: int, count: int, not_before: float | None
) -> Basic.Properties:
    """The AMQP properties (headers included) that carry ``message`` unchanged."""
    headers: dict[str, Any] = dict(message.headers)
    props = {k: v for k, v in message.properties.items() if k != "delivery_info"}
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
    built: Basic.Properties = properties_class()(
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=2,
        priority=priority,
        correlation_id=str(correlation_id) if correlation_id is not None else None,
        reply_to=str(reply_to) if reply_to is not None else None,
    )
    return built


def from_incoming(incoming: AbstractIncomingMessage) -> tuple[Message, dict[str, Any]]:
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


def dead_properties(message: Message | None, info: dict[str, Any]) -> Basic.Properties:
    """A dead letter's properties: the message's own (none for bytes that were never
    one), and ``DEAD_HEADER`` holding ``info`` (queue, reason, count, at, id)."""
    if message is not None:
        properties = to_properties(message, message.priority, 1, None)
    else:
        properties = properties_class()(headers={}, delivery_mode=2)
    assert properties.headers is not None
    properties.headers[DEAD_HEADER] = orjson.dumps({**info, "raw": message is None}).decode()
    return properties


def dead_letter_of(incoming: AbstractIncomingMessage, prefix: str) -> DeadLetter:
    """The dead letter a message of the dead-letter queue holds (``prefix``: the
    broker's, taken off the queue RabbitMQ names when it dead-lettered it itself)."""
    message, ours = from_incoming(incoming)
    packed = ours.get(DEAD_HEADER)
    info: dict[str, Any] = orjson.loads(str(packed)) if packed else {}
    if not info:  # dead-lettered by RabbitMQ itself (quorum delivery limit)
        queue = str(incoming.headers.get("x-first-death-queue", "")).removeprefix(prefix)
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


async def spread(
    channels: Sequence[AbstractChannel],
    call: Callable[[AbstractChannel, A], Awaitable[T]],
    items: Sequence[A],
) -> list[T]:
    """``call(channel, item)`` for each item, over ``channels`` at once, in item order.

    AMQP methods are sequential per channel; eight lanes make 33 declares
    cost about five round trips.
    """
    results: list[T | None] = [None] * len(items)

    async def run(lane: int) -> None:
        channel = channels[lane]
        for index in range(lane, len(items), len(channels)):
            results[index] = await call(channel, items[index])

    await asyncio.gather(*(run(lane) for lane in range(len(channels))))
    return results  # type: ignore[return-value]


async def publish_confirmed(channel: AbstractChannel, sends: Sequence[Send]) -> None:
    """Publish every ``(exchange, routing key, body, properties)`` on ``channel`` (in
    confirm mode) at once, then await every confirm; BrokerError for a nack."""
    raw = await channel.get_underlay_channel()
    results = await asyncio.gather(
        *(
            raw.basic_publish(body, exchange=exchange, routing_key=key, properties=props)
            for exchange, key, body, props in sends
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
        if type(result).__name__ != "Ack":
            raise BrokerError(f"RabbitMQ did not confirm a publish: {result!r}")
