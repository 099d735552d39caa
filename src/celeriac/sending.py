"""From a call (``apply_async``) to a broker-ready :class:`Outgoing` message.

The typed :class:`SendOptions` is the one object that carries calling options
from ``apply_async`` to the broker: a publish crosses ``Task.apply_async`` ->
``Celeriac.send_outgoing`` -> ``Broker.publish``.

:func:`build_outgoing` is where every task message is made (``delay``,
``apply_async``, ``send_task``, ``send_many``, canvas, callbacks sent by a
worker), so it is where ``task_message_max_size`` is enforced: a message over
it raises :class:`~celeriac.errors.MessageTooLarge` before anything is
published or recorded.
"""

from __future__ import annotations

import fnmatch
import numbers
import reprlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ConfigurationError, MessageTooLarge
from .protocol import Message, Outgoing, TaskBody, nodename
from .serialization import Codec
from .settings import Settings

__all__ = ["SendOptions", "build_outgoing", "check_message_size", "route_queue"]

_repr = reprlib.Repr()
_repr.maxstring = 256
_repr.maxother = 256
_repr.maxlevel = 4
_ORIGIN = nodename()


@dataclass(slots=True)
class SendOptions:
    """Every option ``apply_async`` accepts (Celery's names)."""

    task_id: str | None = None
    countdown: float | None = None
    eta: datetime | str | None = None
    expires: float | datetime | str | None = None
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None
    headers: dict[str, Any] | None = None
    link: Any = None
    link_error: Any = None
    ignore_result: bool | None = None
    serializer: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    shadow: str | None = None
    retries: int = 0
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    chord: dict[str, Any] | None = None
    chain: list[dict[str, Any]] | None = None
    reply_to: str | None = None
    extra_headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any]) -> SendOptions:
        """Build from ``apply_async(**options)``; unknown names are an error."""
        unknown = set(options) - _FIELD_NAMES - _IGNORED
        if unknown:
            import difflib

            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, _FIELD_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"apply_async() got an unexpected option {name!r}{hint}")
        return cls(**{k: v for k, v in options.items() if k in _FIELD_NAMES})


_FIELD_NAMES = frozenset(f.name for f in fields(SendOptions)) - {"extra_headers"}
# Accepted for Celery compatibility; meaningless here (AMQP-level or kombu-level knobs).
_IGNORED = frozenset(
    {
        "retry",
        "retry_policy",
        "mandatory",
        "immediate",
        "delivery_mode",
        "compression",
        "add_to_parent",
        "publisher",
        "connection",
        "producer",
        "declare",
        "stamped_headers",
        "replaced_task_nesting",
        "task_type",
        "typing",
    }
)


def _timestamp(value: float | datetime | str | None, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        return now + float(value)
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    raise TypeError(f"expected seconds, a datetime or an ISO 8601 string, not {value!r}")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def route_queue(conf: Settings, task_name: str, explicit: str | None) -> str:
    """The queue for a task: the call's, else ``task_routes``, else the default."""
    if explicit:
        return explicit
    routes = conf.task_routes
    route = routes.get(task_name)
    if route is None:
        for pattern, candidate in routes.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(task_name, pattern):
                route = candidate
                break
    if route is None:
        return conf.task_default_queue
    if isinstance(route, str):
        return route
    if isinstance(route, Mapping) and isinstance(route.get("queue"), str):
        return str(route["queue"])
    raise ConfigurationError(
        f"task_routes[{task_name!r}] must be a queue name or {{'queue': name}}"
    )


def redacted_kwargs_repr(kwargs: Mapping[str, Any], redact: Sequence[str]) -> str:
    if not redact:
        return _repr.repr(dict(kwargs))
    shown = {k: ("***" if k in redact else v) for k, v in kwargs.items()}
    return _repr.repr(shown)


def check_message_size(limit: int | None, task_name: str, body: bytes) -> None:
    """Raise :class:`MessageTooLarge` if ``body`` is over ``limit`` bytes (None, 0: no limit)."""
    if limit and len(body) > limit:
        raise MessageTooLarge(task_name, len(body), limit)


def build_outgoing(
    conf: Settings,
    codec: Codec,
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    opts: SendOptions,
    *,
    default_queue: str | None = None,
    default_priority: int | None = None,
    redact: Sequence[str] = (),
    callbacks: list[dict[str, Any]] | None = None,
    errbacks: list[dict[str, Any]] | None = None,
) -> Outgoing:
    """The protocol v2 message for one task call, with its queue and delay.

    Raises :class:`MessageTooLarge` if the encoded body is over
    ``task_message_max_size``.
    """
    if not isinstance(args, list | tuple):
        raise TypeError("task args must be a list or tuple")
    if not isinstance(kwargs, Mapping):
        raise TypeError("task keyword arguments must be a mapping")
    now = time.time()
    task_id = opts.task_id or str(uuid.uuid4())
    eta_ts = _timestamp(opts.countdown, now) if opts.countdown else _timestamp(opts.eta, now)
    expires_ts = _timestamp(opts.expires, now)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": opts.shadow,
        "eta": _iso(eta_ts),
        "expires": _iso(expires_ts),
        "group": opts.group_id,
        "group_index": opts.group_index,
        "retries": opts.retries,
        "timelimit": [opts.time_limit, opts.soft_time_limit],
        "root_id": opts.root_id or task_id,
        "parent_id": opts.parent_id,
        "argsrepr": opts.argsrepr if opts.argsrepr is not None else _repr.repr(tuple(args)),
        "kwargsrepr": opts.kwargsrepr
        if opts.kwargsrepr is not None
        else redacted_kwargs_repr(kwargs, redact),
        "origin": _ORIGIN,
        "ignore_result": bool(opts.ignore_result),
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if opts.headers:
        headers.update(opts.headers)
    if opts.extra_headers:
        headers.update(opts.extra_headers)
    body = TaskBody(tuple(args), dict(kwargs), callbacks, errbacks, opts.chain, opts.chord)
    serializer = opts.serializer or conf.task_serializer
    payload, content_type, encoding = codec.dumps(body.to_payload(), serializer)
    check_message_size(conf.task_message_max_size, task_name, payload)
    priority = opts.priority if opts.priority is not None else default_priority
    if priority is None:
        priority = conf.task_default_priority or 0
    queue = route_queue(conf, task_name, opts.queue or default_queue)
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": opts.reply_to or "",
        "delivery_mode": 2,
        "priority": priority,
    }
    message = Message(headers, payload, content_type, encoding, properties)
    return Outgoing(queue, message, priority, eta_ts if eta_ts and eta_ts > now else None)
