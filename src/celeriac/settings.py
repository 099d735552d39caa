"""Settings: Celery's lowercase names, typed, validated, with safe defaults.

Sources, later ones win: defaults, ``CELERIAC_<NAME>`` environment variables,
the app constructor, ``app.conf.update()`` / ``app.config_from_object()``.
An unknown name is an error that names the nearest valid one. A Celery setting
celeriac does not use (``celery_settings.UNUSED``) is accepted, kept, and logged
once with what celeriac does instead (:meth:`Settings.warn_unused`). ``None``
for a setting that cannot be None means "not set", as in Celery: the default.

Defaults that differ from Celery's, and why (also in docs/configuration.md):

* ``task_acks_late=True``: a task is acknowledged after it ran, so a worker
  that dies mid-task does not lose it (Celery: False, at-most-once).
* ``task_reject_on_worker_lost=True``: such a task is delivered again, and
  dead-lettered after ``broker_max_deliveries`` (Celery: False, marked failed).
* ``worker_prefetch_multiplier=1``: a worker takes only what it can start now,
  so one slow task does not hold others hostage (Celery: 4).
* ``accept_content=["json"]``: pickle is refused unless named here.
* ``result_backend``: defaults to the broker's own store (embedded SQLite by
  default) instead of no result store at all.
* ``task_eager_propagates=True``: eager mode raises the task's error instead
  of hiding it in a result nobody reads.
* ``task_message_max_size=10 MiB`` (celeriac's own; Celery has no limit): a
  client refuses to send a bigger task message and a worker dead-letters one,
  instead of holding it in memory and running it. None or 0: no limit.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import types
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from .celery_settings import UNUSED
from .errors import ConfigurationError, UnknownSettingError

ENV_PREFIX = "CELERIAC_"


@dataclasses.dataclass(slots=True)
class Settings:
    # connections
    broker_url: str | None = None
    result_backend: str | None = None
    broker_connection_timeout: float = 4.0
    broker_lease_timeout: float = 10.0
    broker_max_deliveries: int = 5
    broker_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # serialization
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: list[str] = dataclasses.field(default_factory=lambda: ["json"])
    result_accept_content: list[str] | None = None
    # tasks
    task_default_queue: str = "celery"
    task_default_priority: int | None = None
    task_routes: Any = None
    """A dict (glob or ``re.compile`` keys), a router function, or a list of them
    (``celeriac.routing``)."""
    task_queues: Any = None
    """``Queue`` objects (celeriac's or kombu's), or a dict of name -> options."""
    task_create_missing_queues: bool = True
    task_default_exchange: str | None = None
    task_default_exchange_type: str = "direct"
    task_default_routing_key: str | None = None
    task_create_missing_queue_exchange_type: str | None = None
    task_acks_late: bool = True
    task_reject_on_worker_lost: bool = True
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_default_rate_limit: str | None = None
    task_ignore_result: bool = False
    task_track_started: bool = False
    task_always_eager: bool = False
    task_eager_propagates: bool = True
    task_default_retry_delay: float = 180.0
    task_max_retries: int | None = 3
    task_redact_kwargs: list[str] = dataclasses.field(default_factory=list)
    task_annotations: dict[str, Any] = dataclasses.field(default_factory=dict)
    task_message_max_size: int | None = 10 * 1024 * 1024
    # results
    result_expires: float | None = 86400.0
    result_extended: bool = False
    result_store_pending: bool = True
    # worker
    worker_pool: str = "process"
    worker_concurrency: int | None = None
    worker_prefetch_multiplier: int = 1
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    worker_shutdown_timeout: float = 30.0
    worker_async_concurrency: int = 100
    worker_hijack_root_logger: bool = True
    worker_middleware: list[Any] = dataclasses.field(default_factory=list)
    """The user's worker middleware, after the defaults: ``Middleware`` instances or
    classes, or ``Placement``s (``celeriac.worker.middleware``); never import paths."""
    worker_autoscale: list[int | str] | None = None
    """celeriac's own (Celery has only ``--autoscale``): ``[max, min]`` children, or
    ``"max,min"``; None: a fixed pool."""
    worker_autoscale_keepalive: float = 30.0
    """Seconds a child stays idle before autoscale stops it (Celery's
    AUTOSCALE_KEEPALIVE environment variable)."""
    worker_revoke_expires: float = 10800.0
    """Seconds a revoke is kept (Celery's CELERY_WORKER_REVOKE_EXPIRES, 3 hours)."""
    # events (celeriac.events)
    worker_send_task_events: bool = False
    task_send_sent_event: bool = False
    event_serializer: str = "json"
    """Only ``"json"``: Flower and ``celery events`` read JSON events (another value is
    refused)."""
    event_buffer_limit: int = 10_000
    """celeriac's own: events one process holds while the broker is slow; past it,
    new events are dropped and counted, never waiting (``celeriac.events.dispatcher``)."""
    # beat (celeriac.beat)
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Celery's periodic tasks: name -> {"task", "schedule", "args", "kwargs", "options"}."""
    beat_max_loop_interval: float = 300.0
    """Longest sleep between two steps of beat (it also wakes for each tick and renewal)."""
    beat_scheduler: Any = None
    """A ``celeriac.beat.Beat`` subclass to run instead (say, one whose ``load_entries``
    reads a database); None: ``Beat``. Never an import path."""
    beat_lease_ttl: float = 5.0
    """celeriac's own: seconds the beat leader's lease lasts without renewal (renewed every
    quarter of it); another beat takes over this long after a leader dies."""
    beat_catch_up: str = "one"
    """celeriac's own: the ticks missed while no beat ran at all: ``"one"`` run per entry,
    ``"none"``, or ``"all"`` (a leader's hand-over never misses any)."""
    # transactional enqueue (celeriac.transactions)
    outbox_url: str | None = None
    """celeriac's own: the application database (``postgresql://...`` or ``sqlite:///path``)
    whose ``celeriac_outbox`` table ``app.transaction(conn)`` writes messages into, for
    ``celeriac outbox-relay`` to publish after commit. None: ``app.transaction`` writes
    straight into the PostgreSQL broker's table, and needs that broker."""
    outbox_batch_size: int = 100
    """celeriac's own: outbox rows the relay publishes per broker publish."""
    outbox_poll_interval: float = 1.0
    """celeriac's own: seconds the relay waits between looks at the outbox when nothing woke
    it (PostgreSQL wakes it at each commit with NOTIFY; SQLite cannot, so set it lower there)."""
    # app
    imports: list[str] = dataclasses.field(default_factory=list)
    include: list[str] = dataclasses.field(default_factory=list)
    timezone: str | None = None
    """The zone ETAs and expiry times are written in (None: UTC, or the local zone
    without ``enable_utc``). A naive ``eta`` datetime is UTC, as in Celery."""
    enable_utc: bool = True
    unused: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    """The values of Celery settings celeriac accepts without using (see ``UNUSED``)."""
    _warned: set[str] = dataclasses.field(default_factory=set, repr=False)

    def update(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = {**(values or {}), **kwargs}
        for name, value in merged.items():
            self[name] = value

    def get(self, name: str, default: Any = None) -> Any:
        if name in SETTING_NAMES:
            return getattr(self, name)
        return self.unused.get(name, default)

    def __getitem__(self, name: str) -> Any:
        if check_name(name) in UNUSED:
            return self.unused.get(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if check_name(name) in UNUSED:
            self.unused[name] = value
        else:
            setattr(self, name, coerce(name, value))

    def __contains__(self, name: object) -> bool:
        return name in SETTING_NAMES or name in UNUSED

    def warn_unused(self, logger: logging.Logger) -> None:
        """Log, once per name, each Celery setting given that celeriac does not use,
        with what celeriac does instead (at worker start and a client's first send)."""
        for name in sorted(self.unused.keys() - self._warned):
            logger.warning(
                "setting %r is accepted for Celery compatibility and not used: %s",
                name,
                UNUSED[name],
            )
            self._warned.add(name)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTING_NAMES}

    def config_from_object(self, obj: object, namespace: str | None = None) -> None:
        """Load settings from a module or object (Celery's ``config_from_object``).

        With ``namespace="CELERY"``, only ``CELERY_``-prefixed names are read
        (``CELERY_BROKER_URL`` sets ``broker_url``), as in Django settings.
        Without one, every public attribute that is not a module, class or
        function must be a setting.
        """
        values: dict[str, Any] = {}
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            value = getattr(obj, attr)
            if namespace:
                prefix = namespace.rstrip("_") + "_"
                if attr.startswith(prefix):
                    values[attr[len(prefix) :].lower()] = value
            elif not isinstance(value, types.ModuleType | type | types.FunctionType):
                values[attr] = value
        self.update(values)

    def load_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Apply ``CELERIAC_<NAME>`` variables (values are JSON, or plain strings)."""
        env = os.environ if environ is None else environ
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX) :].lower()
                if name not in self:
                    raise UnknownSettingError(_unknown_message(name, f"environment variable {key}"))
                self.update({name: _parse_env_value(name, raw)})


_STATE = frozenset({"unused", "_warned"})
SETTING_TYPES: dict[str, Any] = get_type_hints(Settings)
SETTING_NAMES: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(Settings) if f.name not in _STATE
)
_CHOICES = {
    "worker_pool": ("process", "thread", "async", "solo"),
    "event_serializer": ("json",),
    "beat_catch_up": ("one", "none", "all"),
}
_ALIASES = {"worker_pool": {"prefork": "process", "processes": "process", "threads": "thread"}}
"""Celery's names for the same choice."""
_NOT_NEGATIVE = frozenset({"task_message_max_size"})
_OBJECTS = frozenset({"worker_middleware"})
"""Settings that hold objects: a string in them (an import path) is refused."""


def _unknown_message(name: str, where: str = "setting") -> str:
    close = difflib.get_close_matches(name, SETTING_NAMES | UNUSED.keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {where} {name!r}{hint}"


def check_name(name: str) -> str:
    """``name`` if it is a setting (celeriac's or a Celery one celeriac does not use).

    Celery's pre-4.0 uppercase names (`CELERY_ALWAYS_EAGER`, `BROKER_URL`) are
    refused with the way to rename them: Celery 5 reads them only when a
    configuration uses no new name at all, and has deprecated them.
    """
    if name not in SETTING_NAMES and name not in UNUSED:
        lowered = name.lower()
        if lowered in SETTING_NAMES or lowered in UNUSED:
            raise UnknownSettingError(
                f"unknown setting {name!r}; celeriac uses Celery's lowercase names: {lowered!r}"
            )
        if name.isupper():
            raise UnknownSettingError(
                f"unknown setting {name!r}: celeriac reads Celery's lowercase names only; "
                "`celery upgrade settings FILE` renames Celery's old uppercase ones"
            )
        raise UnknownSettingError(_unknown_message(name))
    return name


def _parse_env_value(name: str, raw: str) -> Any:
    hint = SETTING_TYPES.get(name, Any)
    if hint is str or hint == str | None:
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        if _accepts(hint, list):
            return [part.strip() for part in raw.split(",") if part.strip()]
        if _accepts(hint, bool) and raw.lower() in ("true", "false", "yes", "no", "on", "off"):
            return raw.lower() in ("true", "yes", "on")
        return raw


def _accepts(hint: Any, kind: type) -> bool:
    options = getattr(hint, "__args__", None) if isinstance(hint, types.UnionType) else (hint,)
    return any((getattr(o, "__origin__", o) is kind) for o in options or ())


def coerce(name: str, value: Any) -> Any:
    """Validate ``value`` for setting ``name``; return it in the setting's type."""
    hint = SETTING_TYPES[name]
    if hint is Any:
        return value
    if value is None:
        return None if _accepts(hint, type(None)) else getattr(Settings(), name)
    if name == "timezone":
        return _zone_name(value)
    return _coerce_scalar(name, hint, value)


def _coerce_scalar(name: str, hint: Any, value: Any) -> Any:
    if _accepts(hint, float) and isinstance(value, timedelta):
        return value.total_seconds()
    if _accepts(hint, bool) and isinstance(value, bool):
        return value
    if _accepts(hint, int) and isinstance(value, int) and not isinstance(value, bool):
        if value < 0 and name in _NOT_NEGATIVE:
            raise ConfigurationError(f"setting {name!r} cannot be negative ({value})")
        return value
    if _accepts(hint, float) and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if _accepts(hint, str) and isinstance(value, str):
        value = _ALIASES.get(name, {}).get(value, value)
        choices = _CHOICES.get(name)
        if choices and value not in choices:
            raise ConfigurationError(f"setting {name!r} must be one of {choices}, not {value!r}")
        return value
    if (
        _accepts(hint, list)
        and isinstance(value, Iterable)
        and not isinstance(value, str | Mapping)
    ):
        return _no_import_paths(name, list(value))
    if _accepts(hint, list) and isinstance(value, str):
        return _no_import_paths(name, [part.strip() for part in value.split(",") if part.strip()])
    if _accepts(hint, dict) and isinstance(value, Mapping):
        return dict(value)
    expected = getattr(hint, "__name__", None) or str(hint)
    raise ConfigurationError(
        f"setting {name!r} must be {expected}, not {type(value).__name__} ({value!r})"
    )


def _zone_name(value: Any) -> str:
    """A ``timezone`` value: an IANA zone name (or a ``tzinfo`` that has one)."""
    name = value if isinstance(value, str) else getattr(value, "key", None) or str(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"setting 'timezone': unknown time zone {value!r}") from None
    return name


def _no_import_paths(name: str, items: list[Any]) -> list[Any]:
    """``items``; for a setting that holds objects, none may be a string (an import path):
    celeriac imports nothing by name, so "go to definition" always works."""
    if name in _OBJECTS:
        for item in items:
            if isinstance(item, str):
                raise ConfigurationError(
                    f"setting {name!r} takes objects, not import paths like {item!r}: "
                    "import it and pass the object"
                )
    return items
