"""A message as five columns (headers, properties, content type, content encoding, body):
how the SQL brokers (SQLite, PostgreSQL) store one, and read it back or dead-letter it.

Headers and properties are JSON objects (orjson bytes: a JSON column type could
reorder keys); content type and encoding are text; the body is bytes as sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import MessageError, SerializationError
from ..protocol import Message, Outgoing, encode_envelope
from .base import DeadLetter

__all__ = ["Row", "dead_letter_of", "decode_message", "dumps", "message_rows", "raw_bytes"]

Row = tuple[Any, ...]


def decode_message(row: Row) -> Message:
    """A Message from the five message columns; MessageError if they hold none."""
    headers, properties, content_type, content_encoding, body = row
    return Message.checked(
        _json("headers", headers),
        body,
        _text("content_type", content_type),
        _text("content_encoding", content_encoding),
        _json("properties", properties),
    )


def _json(column: str, value: Any) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"{column} are not JSON: {exc}") from exc


def _text(column: str, value: Any) -> str:
    if isinstance(value, str):  # as stored: a dead letter's columns
        return value
    if not isinstance(value, bytes):
        raise MessageError(f"{column} is {type(value).__name__}, not text")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"{column} is not UTF-8: {exc}") from exc


def raw_bytes(columns: Row) -> bytes:
    """The message columns of a fetched row (bytes, or None for NULL), one per line."""
    return b"\n".join(c or b"" for c in columns)


def dumps(value: Any) -> bytes:
    """Headers or properties as stored: a JSON object."""
    return orjson.dumps(value if type(value) is dict else dict(value))


def dead_letter_of(row: Row) -> DeadLetter:
    """A ``DeadLetter`` from a row of ``LIST_DEAD`` (``DEAD_COLUMNS``)."""
    id_, queue, reason, delivery_count, dead_at = row[:5]
    if row[5] is None:  # raw bytes, never a message
        return DeadLetter(str(id_), queue, None, row[9], reason, delivery_count, dead_at)
    message = decode_message(row[5:])
    raw = encode_envelope(message, queue)
    return DeadLetter(str(id_), queue, message, raw, reason, delivery_count, dead_at)


def message_rows(batch: Sequence[Outgoing], not_before: float | None) -> list[Row]:
    """``(queue, priority, not_before, *the five columns)`` per message of ``batch``; a
    message without a delay gets ``not_before`` (None: the database decides)."""
    try:
        return [
            (
                o.queue,
                o.priority,
                o.not_before or not_before,
                dumps(o.message.headers),
                dumps(o.message.properties),
                o.message.content_type,
                o.message.content_encoding,
                o.message.body,
            )
            for o in batch
        ]
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"message headers or properties are not JSON: {exc}") from exc
