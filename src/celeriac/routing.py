"""Routing: where a task's message goes, as Celery's routing guide says.

This is Celery's ``celery/app/routes.py`` (routers) and the part of
``celery/app/amqp.py`` that turns a route into a destination, over
celeriac's settings:

- ``task_routes``: a dict (exact names, then ``*`` globs and ``re.compile``
  patterns in order), a router function ``(name, args, kwargs, options,
  task=None, **kw)``, an object with Celery's old ``route_for_task(name,
  args, kwargs)``, or a list of those, asked in order; the first route that
  is not None wins. A route is a queue name or a dict with ``queue``,
  ``exchange``, ``routing_key``, ``priority``. Import paths are refused:
  celeriac imports nothing by name.
- ``task_queues``: :class:`Queue` objects (or kombu's own, read by their
  attributes; kombu is never imported), or a dict of name -> options. A route
  may name only these queues unless ``task_create_missing_queues`` (the
  default), which makes a queue with a direct exchange of its own name.
  Without ``task_queues``, the one queue is ``task_default_queue``.
- ``task_default_exchange`` / ``task_default_exchange_type`` /
  ``task_default_routing_key``: a queue's exchange and routing key when it
  names none (the exchange and key default to ``task_default_queue``).

The result, :class:`Destination`, names the queue; on RabbitMQ also the
exchange and routing key of the publish (Celery's rule: a direct exchange
with no explicit exchange or key goes straight to the queue). The SQLite,
Redis and memory brokers route by the queue name alone.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from .errors import ConfigurationError
from .settings import Settings

__all__ = [
    "Broadcast",
    "Destination",
    "Exchange",
    "Queue",
    "as_exchange",
    "as_queue",
    "bindings",
    "configured_queues",
    "destination",
    "routers",
]

T = TypeVar("T")
Route = dict[str, Any]
Router = Callable[..., Route | str | None]


@dataclass(frozen=True, slots=True)
class Exchange:
    """An AMQP exchange (kombu's ``Exchange``): ``direct``, ``topic`` or ``fanout``."""

    name: str = ""
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue and how it is bound (kombu's ``Queue``): ``Queue("hipri",
    Exchange("media", "topic"), routing_key="media.#")``."""

    name: str = ""
    exchange: Exchange | str | None = None
    routing_key: str = ""
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    queue_arguments: Mapping[str, Any] | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.exchange, str):
            object.__setattr__(self, "exchange", Exchange(self.exchange))


def Broadcast(  # noqa: N802 - kombu's name, and it builds a Queue
    name: str,
    queue: str | None = None,
    unique: bool = False,
    auto_delete: bool = True,
    exchange: Exchange | None = None,
    alias: str | None = None,
) -> Queue:
    """kombu's ``Broadcast``: a fanout exchange ``name``; each worker consumes a queue of
    its own (``bcast.<uuid>``, made when the configuration is loaded), so every worker
    gets a copy. Route to it by ``name``. Needs RabbitMQ."""
    suffix = uuid.uuid4()
    queue = f"{queue or 'bcast'}.{suffix}" if unique else queue or f"bcast.{suffix}"
    return Queue(
        queue,
        exchange if exchange is not None else Exchange(name, "fanout"),
        auto_delete=auto_delete,
        alias=alias or name,
    )


class Destination(NamedTuple):
    """Where one message goes: the queue (every broker), and the exchange and routing key
    of the publish (RabbitMQ; ``""`` and the queue's name: straight to the queue)."""

    queue: Queue
    exchange: str
    exchange_type: str
    routing_key: str
    priority: int | None = None


def as_queue(obj: Any) -> Queue:
    """A celeriac :class:`Queue` from one of ours or kombu's (duck-typed: its attributes)."""
    if isinstance(obj, Queue):
        return obj
    if not isinstance(getattr(obj, "name", None), str):
        raise ConfigurationError(f"task_queues: expected a Queue, not {obj!r}")
    return Queue(
        obj.name,
        as_exchange(getattr(obj, "exchange", None)),
        str(getattr(obj, "routing_key", "") or ""),
        bool(getattr(obj, "durable", True)),
        bool(getattr(obj, "exclusive", False)),
        bool(getattr(obj, "auto_delete", False)),
        getattr(obj, "queue_arguments", None),
        getattr(obj, "alias", None),
    )


def as_exchange(obj: Any) -> Exchange | None:
    """A celeriac :class:`Exchange` from a name, one of ours or kombu's (duck-typed)."""
    if obj is None or isinstance(obj, Exchange):
        return obj
    if isinstance(obj, str):
        return Exchange(obj)
    return Exchange(
        str(getattr(obj, "name", "") or ""),
        str(getattr(obj, "type", "") or "direct"),
        bool(getattr(obj, "durable", True)),
        bool(getattr(obj, "auto_delete", False)),
    )


def _default_exchange(conf: Settings) -> Exchange:
    return Exchange(
        conf.task_default_exchange or conf.task_default_queue, conf.task_default_exchange_type
    )


def _completed(conf: Settings, queue: Queue) -> Queue:
    """A configured queue with Celery's defaults filled in: the default exchange when it
    names none, the default routing key when it has none."""
    exchange = queue.exchange
    if not isinstance(exchange, Exchange) or not exchange.name:
        exchange = _default_exchange(conf)
    key = queue.routing_key or conf.task_default_routing_key or conf.task_default_queue
    return Queue(
        queue.name,
        exchange,
        key,
        queue.durable,
        queue.exclusive,
        queue.auto_delete,
        queue.queue_arguments,
        queue.alias,
    )


def _entries(value: Any) -> Iterator[Queue]:
    if isinstance(value, Mapping):
        for name, options in value.items():
            opts = dict(options)
            opts.setdefault("routing_key", opts.pop("binding_key", None) or name)
            exchange = opts.pop("exchange", None)
            kind = opts.pop("exchange_type", "direct")
            if isinstance(exchange, str):
                exchange = Exchange(exchange, kind)
            yield Queue(name, as_exchange(exchange), **opts)
    elif isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigurationError(f"task_queues must be a list of Queue objects, not {value!r}")
    else:
        yield from (as_queue(q) for q in value)


_made: dict[str, tuple[Settings, tuple[Any, ...], Any]] = {}
"""What ``_memo`` made last, per kind: the settings and values it was made from."""


def _memo(kind: str, conf: Settings, sources: tuple[Any, ...], make: Callable[[], T]) -> T:
    """``make()``, made again only when ``conf`` or one of ``sources`` (setting values)
    is another object: every send reads the queue table and the routers. Celery makes
    them once per app; here assigning a setting anew is seen, but not changing a list
    or dict in place."""
    last = _made.get(kind)
    if last is not None and last[0] is conf and all(map(operator.is_, last[1], sources)):
        return last[2]  # type: ignore[no-any-return]
    value = make()
    _made[kind] = (conf, sources, value)
    return value


def configured_queues(conf: Settings) -> dict[str, Queue]:
    """``task_queues`` by name (and by alias: a ``Broadcast`` by its exchange's name);
    without it, ``task_default_queue``. A worker given no ``-Q`` consumes these."""
    sources = (
        conf.task_queues,
        conf.task_default_queue,
        conf.task_default_exchange,
        conf.task_default_exchange_type,
        conf.task_default_routing_key,
    )
    return _memo("queues", conf, sources, lambda: _queue_table(conf))


def _queue_table(conf: Settings) -> dict[str, Queue]:
    queues = list(_entries(conf.task_queues)) if conf.task_queues else []
    if not queues:
        queues = [Queue(conf.task_default_queue)]
    table: dict[str, Queue] = {}
    for queue in queues:
        done = _completed(conf, queue)
        table[done.name] = done
        if done.alias:
            table.setdefault(done.alias, done)
    return table


def _missing(conf: Settings, name: str) -> Queue:
    """Celery's `Queues.new_missing`: a queue bound to an exchange of its own name."""
    kind = conf.task_create_missing_queue_exchange_type or "direct"
    return Queue(name, Exchange(name, kind), name)


class _MapRoute:
    """Celery's `MapRoute`: exact names first, then patterns (globs, regexes) in order."""

    def __init__(self, routes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]):
        pairs = routes.items() if isinstance(routes, Mapping) else routes
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, route in pairs:
            if isinstance(key, re.Pattern):
                self.patterns.append((key, route))
            elif not isinstance(key, str):
                raise ConfigurationError(f"task_routes keys are names or patterns, not {key!r}")
            elif "*" in key:
                self.patterns.append((re.compile(fnmatch.translate(key)), route))
            else:
                self.exact[key] = route

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, route in self.patterns:
            if pattern.match(name):
                return route
        return None


def _router(value: Any) -> Router:
    if isinstance(value, Mapping | list | tuple):
        return _MapRoute(value)
    if isinstance(value, str):
        raise ConfigurationError(
            f"task_routes takes routers, not import paths like {value!r}: "
            "import it and pass the object"
        )
    old_style = getattr(value, "route_for_task", None)
    if callable(old_style):
        return lambda name, args, kwargs, options, task=None, **kw: old_style(name, args, kwargs)
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise ConfigurationError(f"task_routes: expected a dict or a router function, not {value!r}")


def routers(conf: Settings) -> list[Router]:
    """``task_routes`` as a list of routers (Celery's ``routes.prepare``)."""
    routes = conf.task_routes
    if not routes:
        return []
    if not isinstance(routes, list | tuple):
        routes = [routes]
    return _memo("routers", conf, (conf.task_routes,), lambda: [_router(r) for r in routes])


def _as_route(value: Any) -> Route:
    if isinstance(value, str):
        return {"queue": value}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(getattr(value, "name", None), str):  # a Queue, ours or kombu's
        return {"queue": value}
    raise ConfigurationError(f"a route is a queue name or a dict, not {value!r}")


def _route(
    conf: Settings,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Route,
    task: Any,
) -> Route:
    """The first route a router of ``task_routes`` gives (each gets a copy of ``options``)."""
    for router in routers(conf):
        found = router(name, args, kwargs, dict(options), task=task)
        if found is not None:
            return _as_route(found)
    return {}


def destination(
    conf: Settings,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    task: Any = None,
) -> Destination:
    """Where a call of task ``name`` goes: ``options`` (the call's and the task's own
    ``queue``, ``exchange``, ``routing_key``, ``priority``; None = not given) over the
    route ``task_routes`` gives, over the default queue (Celery's ``Router.route`` and
    ``send_task_message``)."""
    given = {k: v for k, v in options.items() if v is not None}
    merged = {**_route(conf, name, args, kwargs, given, task), **given}
    queue = _queue(conf, merged.get("queue") or conf.task_default_queue)
    exchange = queue.exchange if isinstance(queue.exchange, Exchange) else Exchange()
    named = merged.get("exchange")
    if named is not None and not isinstance(named, str):  # an Exchange, ours or kombu's
        exchange = as_exchange(named) or exchange
        named = exchange.name
    routing_key = merged.get("routing_key")
    priority = merged.get("priority")
    if (not named or not routing_key) and exchange.type == "direct":
        return Destination(queue, "", "direct", queue.name, priority)
    if named is None:
        named, routing_key = exchange.name, routing_key or queue.routing_key
    return Destination(queue, named, exchange.type, routing_key or "", priority)


def _queue(conf: Settings, wanted: Any) -> Queue:
    if not isinstance(wanted, str):
        return _completed(conf, as_queue(wanted))
    known = configured_queues(conf)
    if wanted in known:
        return known[wanted]
    if conf.task_create_missing_queues:
        return _missing(conf, wanted)
    raise ConfigurationError(f"Queue {wanted!r} missing from task_queues")


def bindings(conf: Settings) -> dict[str, dict[str, Any]]:
    """How each configured queue is bound, as plain data for the RabbitMQ broker (its
    ``bindings`` transport option): name -> exchange, type, routing_key, auto_delete."""
    out: dict[str, dict[str, Any]] = {}
    for queue in configured_queues(conf).values():
        exchange = queue.exchange if isinstance(queue.exchange, Exchange) else Exchange()
        out[queue.name] = {
            "exchange": exchange.name,
            "type": exchange.type,
            "routing_key": queue.routing_key,
            "auto_delete": queue.auto_delete,
        }
    return out
