"""The periodic-task entries of an app: ``beat_schedule`` as Celery reads it, and each tick's id.

An entry is Celery's dict (``"task"``, ``"schedule"``, ``"args"``,
``"kwargs"``, ``"options"``, ``"relative"``) under a name; the name is the key
beat stores the entry's last run under, so renaming an entry starts it afresh
and changing anything else keeps its history.

Each tick is sent with the task id :func:`tick_id` derives from the entry's
name and the tick's time. Two beats that both believe they lead (a lease
lapsed during a pause) can therefore send a tick twice, but never as two
different tasks: the copies share one id, one result, one revoke.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..schedules import BaseSchedule, maybe_schedule

if TYPE_CHECKING:
    from ..canvas import Signature

__all__ = ["BeatLazyFunc", "Entry", "entries_from", "periodic_entry", "tick_id"]

TICK_NAMESPACE = uuid.UUID("6f1c0b7e-52a1-4c55-9d0c-ce1e5ac0bea7")
"""The uuid5 namespace of tick ids (fixed forever: changing it changes every id)."""

_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "relative"})


class BeatLazyFunc:
    """A value in an entry's ``args``/``kwargs`` computed when each tick is sent
    (Celery's ``celery.beat.BeatLazyFunc``)."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs

    def __call__(self) -> Any:
        return self._func(*self._args, **self._kwargs)

    def __repr__(self) -> str:
        return f"<BeatLazyFunc: {self._func!r}>"


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic task."""

    name: str
    task: str
    schedule: BaseSchedule
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def call_args(self) -> tuple[list[Any], dict[str, Any]]:
        """The arguments of one tick's call, lazy values evaluated now."""
        args = [v() if isinstance(v, BeatLazyFunc) else v for v in self.args]
        kwargs = {k: v() if isinstance(v, BeatLazyFunc) else v for k, v in self.kwargs.items()}
        return args, kwargs


def entries_from(schedule: Mapping[str, Mapping[str, Any]]) -> list[Entry]:
    """``beat_schedule``'s entries, checked: a wrong key or schedule names the entry."""
    entries = []
    for name, spec in schedule.items():
        unknown = set(spec) - _KEYS
        if unknown:
            raise ConfigurationError(
                f"beat_schedule entry {name!r}: unknown key(s) {sorted(unknown)}; "
                f"an entry takes {sorted(_KEYS)}"
            )
        if not isinstance(spec.get("task"), str):
            raise ConfigurationError(f"beat_schedule entry {name!r}: 'task' must be a task name")
        every = maybe_schedule(spec.get("schedule"), bool(spec.get("relative", False)))
        if every is None:
            raise ConfigurationError(
                f"beat_schedule entry {name!r}: 'schedule' must be seconds, a timedelta, "
                "crontab(...) or solar(...)"
            )
        _check_positive(name, every)
        entries.append(
            Entry(
                name=name,
                task=spec["task"],
                schedule=every,
                args=tuple(spec.get("args") or ()),
                kwargs=dict(spec.get("kwargs") or {}),
                options=dict(spec.get("options") or {}),
            )
        )
    return entries


def _check_positive(name: str, every: BaseSchedule) -> None:
    run_every = getattr(every, "run_every", None)
    if isinstance(run_every, timedelta) and run_every <= timedelta(0):
        raise ConfigurationError(f"beat_schedule entry {name!r}: the interval must be positive")


def periodic_entry(
    schedule: Any,
    sig: Signature[Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    name: str | None,
    options: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """``app.add_periodic_task``'s key and ``beat_schedule`` entry, as Celery makes them:
    ``sig`` with ``args`` prepended and ``kwargs`` merged; the key is ``name``, else the
    signature's repr."""
    sig = sig.clone(args, kwargs)
    entry = {
        "schedule": schedule,
        "task": sig.name,
        "args": sig.args,
        "kwargs": sig.kwargs,
        "options": {**sig.options, **options},
    }
    return name or repr(sig), entry


def tick_id(entry: str, tick: float) -> str:
    """The task id of ``entry``'s tick at unix time ``tick``: the same on every host."""
    when = datetime.fromtimestamp(tick, UTC).isoformat()
    return str(uuid.uuid5(TICK_NAMESPACE, f"{entry}\x00{when}"))
