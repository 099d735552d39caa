"""The message envelope kombu's Redis transport stores, and what a restore does to it.

A list item (and the first element of an ``unacked`` hash value) is kombu's
JSON envelope::

    {"body": "<base64>", "content-encoding": ..., "content-type": ...,
     "headers": {<task headers>},
     "properties": {..., "priority": p, "body_encoding": "base64",
                    "delivery_info": {"exchange": "", "routing_key": "<queue>"},
                    "delivery_tag": "<uuid4, one per publish>"}}

The ``unacked`` hash value is ``[envelope, exchange, routing_key]``. kombu's
restore sets ``headers.redelivered`` and ``properties.delivery_info.redelivered``;
celeriac's restore does the same, gives the envelope a fresh ``delivery_tag`` (so
a consumer that lapsed cannot ack the delivery another one took since) and
counts the delivery that ended without an ack in ``properties[COUNT]`` (kombu
keeps and ignores it). The transport's own fields are not part of the message a
worker sees: :func:`decode` drops them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import MessageError, SerializationError
from ..protocol import Message, decode_envelope, parse_timestamp

__all__ = [
    "COUNT",
    "Incoming",
    "decode",
    "earlier_deliveries",
    "encode",
    "eta_of",
    "fresh",
    "priority",
    "restored",
]

COUNT = "x-celeriac-deliveries"
"""Envelope property: earlier deliveries of this message that ended without an ack."""
_TRANSPORT_PROPERTIES = frozenset({"body_encoding", "delivery_tag", "delivery_info", COUNT})
_TRANSPORT_HEADERS = frozenset({"redelivered"})


@dataclass(frozen=True, slots=True)
class Incoming:
    """An envelope taken from a list: the message, its deliveries so far, its ETA."""

    message: Message
    count: int
    """This delivery's number: 1 + earlier deliveries that ended without an ack."""
    eta: float | None


def encode(message: Message, queue: str, priority: int, not_before: float | None) -> bytes:
    """The envelope kombu's producer would store for ``message`` sent to ``queue``.

    A delay becomes the ``eta`` header, as Celery sends it, when the message has none.
    """
    headers = dict(message.headers)
    if not_before is not None and not headers.get("eta"):
        headers["eta"] = datetime.fromtimestamp(not_before, UTC).isoformat()
    properties = {key: v for key, v in message.properties.items() if key != COUNT}
    properties.update(
        priority=priority,
        body_encoding="base64",
        delivery_info={"exchange": "", "routing_key": queue},
        delivery_tag=str(uuid.uuid4()),
    )
    envelope = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": headers,
        "properties": properties,
    }
    try:
        return orjson.dumps(envelope)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise SerializationError(f"message headers or properties are not JSON: {exc}") from exc


def decode(raw: bytes) -> Incoming:
    """The message in an envelope; MessageError if it holds none."""
    message = decode_envelope(raw)
    count = earlier_deliveries({"properties": message.properties}) + 1
    eta = eta_of({"headers": message.headers})
    message = dataclasses.replace(
        message,
        headers={k: v for k, v in message.headers.items() if k not in _TRANSPORT_HEADERS},
        properties={k: v for k, v in message.properties.items() if k not in _TRANSPORT_PROPERTIES},
    )
    return Incoming(message, count, eta)


def eta_of(envelope: dict[str, Any]) -> float | None:
    """The envelope's ``eta`` header as a UNIX time; None without one (or with a bad
    one: the worker reports that)."""
    headers = envelope.get("headers")
    with contextlib.suppress(MessageError):
        return parse_timestamp(headers.get("eta")) if isinstance(headers, dict) else None
    return None


def earlier_deliveries(envelope: dict[str, Any]) -> int:
    """Deliveries of ``envelope`` that ended without an ack, before the current one."""
    properties = envelope.get("properties")
    count = properties.get(COUNT, 0) if isinstance(properties, dict) else 0
    return count if isinstance(count, int) else 0


def priority(envelope: dict[str, Any]) -> int:
    """kombu's `Channel._get_message_priority`: the property, clamped to 0-9; 0 if not
    a number."""
    properties = envelope.get("properties")
    try:
        return max(min(int(properties["priority"]), 9), 0)  # type: ignore[index]
    except (TypeError, ValueError, KeyError):
        return 0


def restored(envelope: dict[str, Any], earlier: int) -> bytes:
    """``envelope`` as a restore puts it back: marked redelivered (kombu's
    `Channel._do_restore_message`), with a fresh delivery tag and ``earlier`` deliveries
    that ended without an ack."""
    headers, properties = envelope.get("headers"), envelope.get("properties")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    if isinstance(properties, dict):
        info = properties.get("delivery_info")
        if isinstance(info, dict):
            info["redelivered"] = True
        properties["delivery_tag"] = str(uuid.uuid4())
        properties[COUNT] = earlier
    return orjson.dumps(envelope)


def fresh(envelope: dict[str, Any]) -> bytes:
    """``envelope`` with its delivery count cleared (a dead letter put back)."""
    properties = envelope.get("properties")
    if isinstance(properties, dict):
        properties.pop(COUNT, None)
    return orjson.dumps(envelope)
