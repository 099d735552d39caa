"""Celery message protocol v2: the one wire format every broker carries unchanged.

A :class:`Message` is what a broker stores and moves: AMQP-style properties,
the task headers and the serialized body ``[args, kwargs, embed]`` where
``embed`` is ``{"callbacks", "errbacks", "chain", "chord"}`` (chain reversed).
:func:`encode_envelope` and :func:`decode_envelope` give the JSON envelope that
kombu's virtual transports (Redis, SQS, ...) use, with a base64 body, for
brokers that store one blob per message.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import MessageError

__all__ = [
    "Message",
    "Outgoing",
    "TaskBody",
    "decode_envelope",
    "encode_envelope",
    "parse_timestamp",
    "nodename",
]

HEADER_KEYS = (
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
)


def nodename() -> str:
    """``pid@hostname``, the ``origin`` Celery puts in headers."""
    return f"{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Message:
    """A task message as it travels: headers, body bytes and properties."""

    headers: Mapping[str, Any]
    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    properties: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def checked(
        cls,
        headers: Any,
        body: Any,
        content_type: Any,
        content_encoding: Any,
        properties: Any,
    ) -> Message:
        """A Message from parts a broker stored, or MessageError if they are not one."""
        if type(headers) is not dict or type(properties) is not dict:
            raise MessageError("headers or properties are not a JSON object")
        if not isinstance(content_type, str) or not isinstance(content_encoding, str):
            raise MessageError("content type or encoding is not text")
        if not isinstance(body, bytes):
            raise MessageError(f"body is {type(body).__name__}, not bytes")
        return cls(headers, body, content_type, content_encoding, properties)

    @property
    def id(self) -> str:
        value = self.headers.get("id") or self.properties.get("correlation_id")
        if not isinstance(value, str) or not value:
            raise MessageError("message has no task id")
        return value

    @property
    def task(self) -> str:
        value = self.headers.get("task")
        if not isinstance(value, str) or not value:
            raise MessageError("message has no task name")
        return value

    @property
    def priority(self) -> int:
        value = self.properties.get("priority")
        return value if isinstance(value, int) else 0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message on its way into a queue.

    ``not_before`` is a UNIX timestamp before which the broker must not deliver
    it (eta, countdown, retry delay); brokers keep such messages themselves.
    """

    queue: str
    message: Message
    priority: int = 0
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class TaskBody:
    """The decoded body of a protocol v2 message."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None

    @classmethod
    def from_payload(cls, payload: Any) -> TaskBody:
        if not isinstance(payload, list | tuple) or len(payload) != 3:
            raise MessageError("body is not [args, kwargs, embed]")
        args, kwargs, embed = payload
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise MessageError("body args must be a list and kwargs a mapping")
        if embed is None:
            embed = {}
        if not isinstance(embed, dict):
            raise MessageError("body embed must be a mapping")
        return cls(
            tuple(args),
            kwargs,
            embed.get("callbacks"),
            embed.get("errbacks"),
            embed.get("chain"),
            embed.get("chord"),
        )

    def to_payload(self) -> list[Any]:
        return [
            list(self.args),
            self.kwargs,
            {
                "callbacks": self.callbacks,
                "errbacks": self.errbacks,
                "chain": self.chain,
                "chord": self.chord,
            },
        ]


def parse_timestamp(value: Any) -> float | None:
    """An ``eta``/``expires`` header (ISO 8601, naive means UTC) as a UNIX time."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise MessageError(f"bad timestamp {value!r}") from exc
    else:
        raise MessageError(f"bad timestamp {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def encode_envelope(message: Message, queue: str = "", exchange: str = "") -> bytes:
    """kombu's virtual-transport JSON envelope (what Celery puts in a Redis list)."""
    properties = dict(message.properties)
    properties.setdefault("delivery_mode", 2)
    properties.setdefault("priority", message.priority)
    properties["body_encoding"] = "base64"
    properties["delivery_info"] = {"exchange": exchange, "routing_key": queue}
    properties.setdefault("delivery_tag", message.id)
    return orjson.dumps(
        {
            "body": base64.b64encode(message.body).decode("ascii"),
            "content-encoding": message.content_encoding,
            "content-type": message.content_type,
            "headers": dict(message.headers),
            "properties": properties,
        }
    )


def decode_envelope(data: bytes | str) -> Message:
    """Parse an envelope from :func:`encode_envelope` (or from kombu)."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"envelope is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or "body" not in raw:
        raise MessageError("envelope has no body")
    properties = raw.get("properties") or {}
    body = raw["body"]
    if properties.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (ValueError, TypeError) as exc:
            raise MessageError("envelope body is not base64") from exc
    elif isinstance(body, str):
        body = body.encode("utf-8")
    headers = raw.get("headers")
    if not isinstance(headers, dict):
        raise MessageError("envelope has no headers (protocol v1 is not supported)")
    return Message(
        headers=headers,
        body=body,
        content_type=raw.get("content-type") or "application/json",
        content_encoding=raw.get("content-encoding") or "utf-8",
        properties=properties,
    )


def check_headers(headers: Mapping[str, Any]) -> None:
    """Raise :class:`MessageError` unless the headers look like protocol v2."""
    for key in ("task", "id"):
        if not isinstance(headers.get(key), str) or not headers.get(key):
            raise MessageError(f"header {key!r} missing or not a string")
    retries = headers.get("retries", 0)
    if retries is not None and not isinstance(retries, int):
        raise MessageError("header 'retries' is not an integer")
    timelimit = headers.get("timelimit")
    if timelimit is not None and (not isinstance(timelimit, Sequence) or len(timelimit) != 2):
        raise MessageError("header 'timelimit' is not [hard, soft]")
