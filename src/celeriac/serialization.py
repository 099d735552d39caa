"""Payload serializers, with kombu's names, content types and JSON type tags.

JSON is the default and the only accepted content type unless ``accept_content``
names others. JSON uses orjson and kombu's ``{"__type__", "__value__"}`` tags for
datetime, date, time, Decimal, UUID and bytes, so Celery peers read our payloads
and we read theirs. Pickle decodes only when the app opts in by naming it in
``accept_content``; the worker never unpickles data it was not told to trust.
"""

from __future__ import annotations

import base64
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import msgpack
import orjson

from .errors import ConfigurationError, ContentDisallowed, SerializationError

__all__ = ["SERIALIZERS", "Codec", "Serializer", "resolve_name"]

_TAG = "__type__"
_VALUE = "__value__"
_TAG_BYTES = b'"__type__"'


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {_TAG: kind, _VALUE: value}


def _encode_special(obj: Any) -> Any:
    """Encode a value orjson/msgpack cannot, as kombu's JSON encoder would."""
    if isinstance(obj, datetime):
        return _tag("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _tag("date", obj.isoformat())
    if isinstance(obj, time):
        return _tag("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _tag("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _tag("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return _tag("bytes", raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _tag("base64", base64.b64encode(raw).decode("ascii"))
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _untag(obj: Any) -> Any:
    """Replace kombu type tags by the values they stand for, in place where possible."""
    if isinstance(obj, dict):
        if len(obj) == 2 and _TAG in obj and _VALUE in obj:
            decoder = _DECODERS.get(obj[_TAG])
            if decoder is None:
                raise SerializationError(f"unsupported JSON type tag {obj[_TAG]!r}")
            return decoder(obj[_VALUE])
        for key, value in obj.items():
            if isinstance(value, dict | list):
                obj[key] = _untag(value)
        return obj
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            if isinstance(value, dict | list):
                obj[i] = _untag(value)
    return obj


_PLAIN = frozenset({str, int, float, bool, type(None), bytes})


def _has_uuid(obj: Any) -> bool:
    """Whether a UUID hides in ``obj``; runs on every message, so plain values cost no call
    (and a plain loop, not ``any()`` over a generator, which costs twice as much here)."""
    if isinstance(obj, uuid.UUID):
        return True
    if isinstance(obj, dict):
        values: Any = obj.values()
    elif isinstance(obj, list | tuple):
        values = obj
    else:
        return False
    for value in values:  # noqa: SIM110 - see the docstring
        if type(value) not in _PLAIN and _has_uuid(value):
            return True
    return False


def _tag_uuids(obj: Any) -> Any:
    """orjson writes UUIDs as bare strings; kombu tags them. Tag them first."""
    if isinstance(obj, uuid.UUID):
        return _encode_special(obj)
    if isinstance(obj, list | tuple):
        return [_tag_uuids(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _tag_uuids(v) for k, v in obj.items()}
    return obj


_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def json_dumps(obj: Any) -> bytes:
    if type(obj) not in _PLAIN and _has_uuid(obj):
        obj = _tag_uuids(obj)
    return orjson.dumps(obj, default=_encode_special, option=_ORJSON_OPTS)


def json_loads(data: bytes | str) -> Any:
    obj = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    return _untag(obj) if _TAG_BYTES in raw else obj


def msgpack_dumps(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True, default=_encode_special, datetime=False)
    return packed


def msgpack_loads(data: bytes | str) -> Any:
    raw = data.encode() if isinstance(data, str) else data
    obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return _untag(obj) if _TAG_BYTES[1:-1] in raw else obj


def yaml_dumps(obj: Any) -> bytes:
    yaml = _import_yaml()
    return yaml.safe_dump(obj).encode("utf-8")  # type: ignore[no-any-return]


def yaml_loads(data: bytes | str) -> Any:
    return _import_yaml().safe_load(data)


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the yaml serializer needs PyYAML: pip install 'celeriac[yaml]'"
        ) from exc
    return yaml


def pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def pickle_loads(data: bytes | str) -> Any:
    raw = data.encode("latin-1") if isinstance(data, str) else data
    return pickle.loads(raw)


@dataclass(frozen=True, slots=True)
class Serializer:
    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes | str], Any]

    def encode(self, obj: Any) -> bytes:
        """``dumps``, raising :class:`SerializationError` for what it cannot encode."""
        try:
            return self.dumps(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize with {self.name}: {exc}") from exc


SERIALIZERS: dict[str, Serializer] = {
    s.name: s
    for s in (
        Serializer("json", "application/json", "utf-8", json_dumps, json_loads),
        Serializer("msgpack", "application/x-msgpack", "binary", msgpack_dumps, msgpack_loads),
        Serializer("yaml", "application/x-yaml", "utf-8", yaml_dumps, yaml_loads),
        Serializer(
            "pickle", "application/x-python-serialize", "binary", pickle_dumps, pickle_loads
        ),
    )
}
_BY_CONTENT_TYPE = {s.content_type: s for s in SERIALIZERS.values()}
_BY_CONTENT_TYPE["application/data"] = SERIALIZERS["pickle"]  # kombu's raw pickle alias
_BY_CONTENT_TYPE["application/msgpack"] = SERIALIZERS["msgpack"]


def resolve_name(name_or_type: str) -> Serializer:
    """The serializer for a name (``json``) or a content type (``application/json``)."""
    found = SERIALIZERS.get(name_or_type) or _BY_CONTENT_TYPE.get(name_or_type)
    if found is None:
        known = ", ".join(SERIALIZERS)
        raise ConfigurationError(f"unknown serializer {name_or_type!r}; known: {known}")
    return found


class Codec:
    """Encodes with a named serializer; decodes only the content types it accepts."""

    __slots__ = ("_accepted",)

    def __init__(self, accept_content: Iterable[str]):
        self._accepted = frozenset(resolve_name(n).content_type for n in accept_content)

    @property
    def accepted(self) -> frozenset[str]:
        return self._accepted

    def dumps(self, obj: Any, serializer: str) -> tuple[bytes, str, str]:
        """Return ``(payload, content_type, content_encoding)``, with the serializer named
        (or the one of a content type); see :meth:`Serializer.encode` for one at hand."""
        s = resolve_name(serializer)
        return s.encode(obj), s.content_type, s.content_encoding

    def loads(self, data: bytes | str, content_type: str) -> Any:
        s = _BY_CONTENT_TYPE.get(content_type)
        if s is None or s.content_type not in self._accepted:
            accepted = ", ".join(sorted(self._accepted))
            raise ContentDisallowed(
                f"refusing content type {content_type!r} (accept_content allows: {accepted})"
            )
        try:
            return s.loads(data)
        except Exception as exc:
            raise SerializationError(f"cannot decode {content_type} payload: {exc}") from exc
