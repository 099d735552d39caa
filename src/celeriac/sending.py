"""From a call (``apply_async``) to a published message: the sending layer.

A publish crosses three calls with one typed options object
(:class:`SendOptions`): ``Task.apply_async`` -> :func:`publish` ->
``Broker.publish``. Everything the message needs is decided in
:func:`build_outgoing`, once, for every way of sending (``delay``,
``apply_async``, ``Signature.delay``, ``send_task``, ``send_many``, canvas,
callbacks sent by a worker). Each option comes from the first of these that
has it:

- the call's :class:`SendOptions`;
- the task's own options (:class:`TaskOptions`; ``Task`` is one), when the
  task is registered in the sending app. ``Task`` already folds the settings
  that hold for it wherever it runs (``task_time_limit``,
  ``task_soft_time_limit``, ``task_ignore_result``, ``task_redact_kwargs``)
  into those options, since the worker reads them too;
- the settings that route a message at send time: ``task_routes``,
  ``task_queues`` and ``task_default_queue`` (:mod:`celeriac.routing`, as
  Celery routes), ``task_default_priority``, ``task_serializer``
  (:func:`message_serializer`).

A route that names an exchange the message does not go straight to its
queue through (a topic or fanout exchange, or an explicit exchange and
routing key) travels in the message's ``delivery_info`` property, kombu's
place for it, for the RabbitMQ broker; the other brokers route by queue name.

A task not registered here (``send_task`` by name) leaves its time limits to
the worker's task and stores its result unless the call says otherwise.
``task_message_max_size`` is enforced here too: a message over it raises
:class:`~celeriac.errors.MessageTooLarge` before anything is published or
recorded.

The app is passed in, typed by the :class:`App` protocol, so this layer
imports nothing above it.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import numbers
import reprlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from .brokers.base import Broker
from .connections import LoopConnections
from .errors import MessageTooLarge
from .events.sent import send_task_sent
from .protocol import Message, Outgoing, TaskBody, nodename
from .routing import destination
from .serialization import Serializer, resolve_name
from .settings import Settings
from .shared_storage import StorageWrite
from .signals import after_task_publish, before_task_publish
from .transactions.current import enlisted

__all__ = [
    "App",
    "SendOptions",
    "TaskOptions",
    "announce",
    "build_outgoing",
    "check_message_size",
    "message_serializer",
    "pending_markers",
    "publish",
    "zone_of",
]

logger = logging.getLogger("celeriac")

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


class App(Protocol):
    """What sending needs of the app (``Celeriac`` is one)."""

    @property
    def conf(self) -> Settings: ...
    @property
    def reply_queue(self) -> str | None: ...
    def connections(self) -> LoopConnections: ...


class TaskOptions(Protocol):
    """A registered task's own options for its messages (``Task`` is one)."""

    @property
    def queue(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def serializer(self) -> str | None: ...
    @property
    def time_limit(self) -> float | None: ...
    @property
    def soft_time_limit(self) -> float | None: ...
    @property
    def expires(self) -> float | datetime | None: ...
    @property
    def ignore_result(self) -> bool: ...
    @property
    def redact_kwargs(self) -> tuple[str, ...]: ...


def _timestamp(value: float | datetime | str, now: float) -> float:
    """A countdown, datetime or ISO string as a UNIX time. A naive datetime is UTC,
    whatever ``timezone`` says: Celery 5.7's worker reads one so (``maybe_make_aware``
    makes a naive ETA UTC before it localizes it)."""
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


def _iso(ts: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(ts, zone).isoformat()


def zone_of(conf: Settings) -> tzinfo:
    """The app's time zone (Celery's ``app.timezone``): ``timezone``; unset, UTC, or the
    machine's zone without ``enable_utc``. ETA and expiry headers are written in it."""
    if conf.timezone:
        return ZoneInfo(conf.timezone)
    if conf.enable_utc:
        return UTC
    return datetime.now().astimezone().tzinfo or UTC


def redacted_kwargs_repr(kwargs: Mapping[str, Any], redact: Sequence[str]) -> str:
    if not redact:
        return _repr.repr(dict(kwargs))
    shown = {k: ("***" if k in redact else v) for k, v in kwargs.items()}
    return _repr.repr(shown)


def check_message_size(limit: int | None, task_name: str, body: bytes) -> None:
    """Raise :class:`MessageTooLarge` if ``body`` is over ``limit`` bytes (None, 0: no limit)."""
    if limit and len(body) > limit:
        raise MessageTooLarge(task_name, len(body), limit)


def message_serializer(
    conf: Settings, task: TaskOptions | None, explicit: str | None = None
) -> Serializer:
    """The serializer of a task's message: the call's, else the task's, else ``task_serializer``."""
    task_serializer = task.serializer if task is not None else None
    return resolve_name(explicit or task_serializer or conf.task_serializer)


def _wire_signatures(value: Any) -> list[dict[str, Any]] | None:
    """``link=`` may be one signature or a list of them; the wire wants a list of dicts."""
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"expected a signature, not {type(item).__name__}")
        out.append(dict(item))
    return out or None


def _headers(
    task_name: str,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    opts: SendOptions,
    task: TaskOptions | None,
    conf: Settings,
    times: tuple[float | None, float | None],
) -> dict[str, Any]:
    """Protocol v2 headers: the call's options over the task's (see the module docstring)."""
    time_limit, soft_time_limit, ignore_result = opts.time_limit, opts.soft_time_limit, False
    if task is not None:
        time_limit = task.time_limit if time_limit is None else time_limit
        soft_time_limit = task.soft_time_limit if soft_time_limit is None else soft_time_limit
        ignore_result = task.ignore_result
    redact = task.redact_kwargs if task is not None else conf.task_redact_kwargs
    eta_ts, expires_ts = times
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": opts.shadow,
        "eta": None if eta_ts is None else _iso(eta_ts, zone_of(conf)),
        "expires": None if expires_ts is None else _iso(expires_ts, zone_of(conf)),
        "group": opts.group_id,
        "group_index": opts.group_index,
        "retries": opts.retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": opts.root_id or task_id,
        "parent_id": opts.parent_id,
        "argsrepr": opts.argsrepr if opts.argsrepr is not None else _repr.repr(tuple(args)),
        "kwargsrepr": opts.kwargsrepr
        if opts.kwargsrepr is not None
        else redacted_kwargs_repr(kwargs, redact),
        "origin": _ORIGIN,
        "ignore_result": bool(ignore_result if opts.ignore_result is None else opts.ignore_result),
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if opts.headers:
        headers.update(opts.headers)
    if opts.extra_headers:
        headers.update(opts.extra_headers)
    return headers


def build_outgoing(
    app: App,
    task_name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    opts: SendOptions,
    task: TaskOptions | None = None,
) -> Outgoing:
    """The protocol v2 message for one call of ``task_name``, with its queue and delay.

    ``task`` is the registered task's own options (None: a task known only by
    name). Raises :class:`MessageTooLarge` if the encoded body is over
    ``task_message_max_size``.
    """
    if not isinstance(args, list | tuple):
        raise TypeError("task args must be a list or tuple")
    if not isinstance(kwargs, Mapping):
        raise TypeError("task keyword arguments must be a mapping")
    conf = app.conf
    now = time.time()
    task_id = opts.task_id or str(uuid.uuid4())
    when = opts.countdown or opts.eta
    eta_ts = None if when is None else _timestamp(when, now)
    expires = opts.expires if opts.expires is not None or task is None else task.expires
    expires_ts = None if expires is None else _timestamp(expires, now)
    headers = _headers(task_name, task_id, args, kwargs, opts, task, conf, (eta_ts, expires_ts))
    body = TaskBody(
        tuple(args),
        dict(kwargs),
        None if opts.link is None else _wire_signatures(opts.link),
        None if opts.link_error is None else _wire_signatures(opts.link_error),
        opts.chain,
        opts.chord,
    )
    serializer = message_serializer(conf, task, opts.serializer)
    given = {
        "queue": opts.queue or (task.queue if task is not None else None),
        "exchange": opts.exchange,
        "routing_key": opts.routing_key,
        "priority": opts.priority if opts.priority is not None or task is None else task.priority,
    }
    route = destination(conf, task_name, args, kwargs, given, task)
    priority = route.priority if route.priority is not None else conf.task_default_priority or 0
    queue = route.queue.name
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": opts.reply_to or app.reply_queue or "",
        "delivery_mode": 2,
        "priority": priority,
    }
    if route.exchange:
        properties["delivery_info"] = {
            "exchange": route.exchange,
            "exchange_type": route.exchange_type,
            "routing_key": route.routing_key,
        }
    payload = body.to_payload()
    if before_task_publish.receivers:  # they may change headers and arguments: before encoding
        before_task_publish.send(
            sender=task_name,
            body=payload,
            exchange=route.exchange,
            routing_key=route.routing_key,
            headers=headers,
            properties=properties,
            declare=[route.queue],
            retry_policy={"max_retries": 0},  # a publish is not retried: it fails fast
        )
    encoded = serializer.encode(payload)
    check_message_size(conf.task_message_max_size, task_name, encoded)
    message = Message(
        headers, encoded, serializer.content_type, serializer.content_encoding, properties
    )
    return Outgoing(queue, message, priority, eta_ts if eta_ts and eta_ts > now else None)


async def publish(app: App, batch: Sequence[Outgoing], writes: Sequence[StorageWrite] = ()) -> None:
    """Publish, and record PENDING (so the id is known) with it.

    When broker and result store share a database (the default SQLite
    file, or one Redis database), the markers go with the messages in one
    transaction or round trip. Otherwise both writes overlap; the marker is
    set-if-absent, so it may land after a fast worker's result without
    hiding it. With ``task_send_sent_event``, a task-sent event per message follows.
    ``writes`` are more writes in the broker's own storage made with the messages
    (beat's record of the ticks it sends; only for a broker with a ``storage``).
    Inside ``app.transaction(conn)`` the batch goes into the caller's transaction
    instead (:mod:`celeriac.transactions`), and no signal or event follows.
    """
    enlistment = enlisted(app)
    if enlistment is not None:  # inside app.transaction(conn): into the caller's transaction
        assert not writes, "storage writes are never made inside an application's transaction"
        await enlistment.enqueue(batch)
        return
    conns = app.connections()
    broker = await conns.abroker()
    pending = pending_markers(app.conf, batch) if app.conf.result_store_pending else []
    if not pending:
        if conns.reply_queue is not None:
            await conns.abackend()  # the reply queue exists before any reply is sent
        await broker.publish(batch, writes=writes)
    elif conns.shared:
        backend = await conns.abackend()
        await broker.publish(batch, writes=[*backend.pending_writes(pending), *writes])
    else:
        # The marker first: a store that answers at once (SQLite on the loop)
        # is done before the publish takes the write lock; a networked one
        # overlaps its round trip with the publish's.
        backend = await conns.abackend()
        stored, published = await asyncio.gather(
            backend.store_pending(pending),
            broker.publish(batch, writes=writes),
            return_exceptions=True,
        )
        if isinstance(published, BaseException):
            raise published
        if isinstance(stored, BaseException):  # the tasks are sent: do not make callers resend
            logger.warning("sent %d task(s) but could not record PENDING: %s", len(batch), stored)
    await announce(app, broker, batch)


async def announce(app: App, broker: Broker, batch: Sequence[Outgoing]) -> None:
    """What follows a publish, if anyone listens: ``after_task_publish`` and, with
    ``task_send_sent_event``, a task-sent event per message (a worker's republish of a
    retry too)."""
    if after_task_publish.receivers:
        await _announce_published(batch)
    if app.conf.task_send_sent_event:
        await send_task_sent(broker.operations(), batch)


async def _announce_published(batch: Sequence[Outgoing]) -> None:
    """``after_task_publish`` for each message, with Celery's arguments (the body decoded
    again: the message holds it encoded, and only a receiver needs it)."""
    for outgoing in batch:
        message = outgoing.message
        route = message.properties.get("delivery_info") or {}
        await after_task_publish.asend(
            sender=message.headers.get("task"),
            body=resolve_name(message.content_type).loads(message.body),
            headers=message.headers,
            exchange=route.get("exchange", ""),
            routing_key=route.get("routing_key", outgoing.queue),
        )


def pending_markers(conf: Settings, batch: Sequence[Outgoing]) -> list[tuple[str, float | None]]:
    """(task id, seconds to keep its PENDING marker) for the tasks that store results.

    A delayed task's marker is kept until ``result_expires`` after it is due.
    """
    expires = conf.result_expires
    now = time.time()
    return [
        (
            o.message.id,
            None if o.not_before is None or expires is None else expires + o.not_before - now,
        )
        for o in batch
        if not o.message.headers.get("ignore_result")
    ]
