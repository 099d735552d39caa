"""Which ticks are due: each entry's ticks after its last run, and the catch-up rule.

A tick is a point in time the entry's schedule names (``schedule.next_after``
of the previous one), never the moment beat happened to send it: ticks do
not drift, and every beat computes the same ticks from the same stored last
run, which is what makes their task ids (``entries.tick_id``) agree.

An entry seen for the first time starts from now, as Celery's does (an
interval runs one interval later; a crontab at its next match). Ticks that
fell while no beat led are sent as ``beat_catch_up`` says, when the new leader
finds the lease idle for longer than a hand-over takes: ``"one"`` (the latest
of them, once), ``"none"`` (skipped), ``"all"`` (every one, in order). A
hand-over (the lease lapsed or was released moments ago) always sends every
missed tick: nothing is lost because a leader died.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Literal

from ..schedules import BaseSchedule
from .entries import Entry

__all__ = ["CatchUp", "Plan", "next_ticks", "plan", "upcoming"]

CatchUp = Literal["one", "none", "all"]

MAX_TICKS = 1000
"""Ticks of one entry sent in one step; the rest go in the next steps."""


@dataclass(frozen=True, slots=True)
class Plan:
    due: list[tuple[Entry, float]]
    """(entry, tick) to send, entry by entry, oldest tick first."""
    runs: dict[str, float]
    """Last runs that change: the latest tick sent (or skipped), or now for a new entry."""
    wake: float
    """Unix time of the earliest tick still to come."""


def plan(
    entries: Sequence[Entry],
    runs: Mapping[str, float],
    now: float,
    zone: tzinfo,
    catch_up: CatchUp = "all",
) -> Plan:
    """What to send at ``now``, given each entry's stored last run."""
    due: list[tuple[Entry, float]] = []
    changed: dict[str, float] = {}
    wake = math.inf
    for entry in entries:
        last = runs.get(entry.name)
        if last is None:
            changed[entry.name] = last = now
        else:
            ticks = _pick(_ticks(entry.schedule, last, now, zone), catch_up)
            if ticks:
                changed[entry.name] = last = ticks[-1]
                if catch_up != "none":
                    due += [(entry, tick) for tick in ticks]
        wake = min(wake, _after(entry.schedule, last, zone))
    return Plan(due, changed, wake)


def next_ticks(schedule: BaseSchedule, last: float, zone: tzinfo, count: int) -> list[float]:
    """The ``count`` ticks after ``last`` (for ``beat --dry-run``)."""
    ticks = []
    for _ in range(count):
        last = _after(schedule, last, zone)
        ticks.append(last)
    return ticks


def upcoming(
    entries: Sequence[Entry], runs: Mapping[str, float], now: float, zone: tzinfo
) -> list[tuple[Entry, float]]:
    """Each entry's next tick after its stored last run (an entry never sent: after
    ``now``), soonest first."""
    ticks = [(e, _after(e.schedule, runs.get(e.name, now), zone)) for e in entries]
    return sorted(ticks, key=lambda pair: pair[1])


def _pick(ticks: Iterator[float], catch_up: CatchUp) -> list[float]:
    if catch_up == "all":
        return [tick for tick, _ in zip(ticks, range(MAX_TICKS), strict=False)]
    latest = None
    for latest in ticks:  # noqa: B007 - only the last one is wanted
        pass
    return [] if latest is None else [latest]


def _ticks(schedule: BaseSchedule, last: float, now: float, zone: tzinfo) -> Iterator[float]:
    """The ticks after ``last`` up to ``now``, oldest first."""
    tick = _after(schedule, last, zone)
    while tick <= now:
        yield tick
        tick = _after(schedule, tick, zone)


def _after(schedule: BaseSchedule, tick: float, zone: tzinfo) -> float:
    return schedule.next_after(datetime.fromtimestamp(tick, UTC), zone).timestamp()
