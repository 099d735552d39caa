"""What every schedule shares: the contract, the app's zone and clock, wall time to instants."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["AppLike", "BaseSchedule", "NowFun", "ZoneConf", "app_zone", "occurrences", "schedstate"]

NowFun = Callable[[], datetime]
"""Celery's ``nowfun``: the current time (a naive one is UTC)."""


class ZoneConf(Protocol):
    """The two settings a schedule reads from an app's ``conf``."""

    @property
    def timezone(self) -> str | tzinfo | None: ...

    @property
    def enable_utc(self) -> bool: ...


class AppLike(Protocol):
    """An app as schedules see it (celeriac's ``Celeriac``; never imported here)."""

    @property
    def conf(self) -> ZoneConf: ...


class schedstate(NamedTuple):  # noqa: N801 - Celery's name
    """What ``is_due`` returns: due now, and seconds until the schedule should be asked again."""

    is_due: bool
    next: float


def app_zone(app: AppLike | None) -> tzinfo:
    """The zone ``app`` reads wall times in (Celery's ``app.timezone``): its ``timezone``
    setting; unset, UTC (or the machine's zone without ``enable_utc``). No app: UTC."""
    if app is None:
        return UTC
    zone = app.conf.timezone
    if isinstance(zone, tzinfo):
        return zone
    if zone:
        return ZoneInfo(zone)
    return UTC if app.conf.enable_utc else _local_zone()


def _local_zone() -> tzinfo:
    """The machine's zone with its DST rules (``TZ``, else /etc/localtime); when neither
    names one, the current fixed offset."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return datetime.now().astimezone().tzinfo or UTC


def as_zone(zone: str | tzinfo) -> tzinfo:
    return ZoneInfo(zone) if isinstance(zone, str) else zone


def aware(dt: datetime) -> datetime:
    """``dt``, a naive one taken as UTC (as Celery takes ``last_run_at`` and ``nowfun()``)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def occurrences(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The instants (UTC, in order) at which clocks in ``zone`` show the naive ``wall``.

    One, usually. Two when clocks go back and show it twice (PEP 495's ``fold=0``,
    then ``fold=1``). When clocks spring forward over it, it never shows: its one
    instant is then ``fold=0``'s, the wall time read with the offset in force before
    the change, which is ``wall`` moved forward by the length of the gap
    (02:30 in a 02:00 -> 03:00 change is 03:30).
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    # in a gap fold=1 reads the wall with the later offset, an earlier instant: not a showing
    return [first, second] if second > first else [first]


class BaseSchedule(ABC):
    """When a periodic task runs.

    ``next_after`` is the contract beat uses; ``remaining_estimate`` and ``is_due``
    are Celery's API, answered from it with ``now()`` and ``tz``.
    """

    def __init__(self, nowfun: NowFun | None = None, app: AppLike | None = None) -> None:
        self.nowfun = nowfun
        self._app = app

    @abstractmethod
    def next_after(self, last: datetime, tz: tzinfo) -> datetime:
        """The first tick strictly after ``last`` (aware), as an aware UTC datetime.

        ``tz`` is the zone the schedule's wall-clock fields mean (the app's
        ``timezone``); a schedule that has a zone of its own uses that instead.
        """

    @property
    def app(self) -> AppLike | None:
        return self._app

    @app.setter
    def app(self, app: AppLike | None) -> None:
        self._app = app

    @property
    def tz(self) -> tzinfo:
        """The zone ``remaining_estimate`` and ``is_due`` read wall times in: the app's."""
        return app_zone(self._app)

    def now(self) -> datetime:
        """``nowfun()``, else the current time in ``tz``."""
        return aware(self.nowfun()) if self.nowfun else datetime.now(self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from ``now()`` to the first tick after ``last_run_at`` (negative when
        that tick is past). A naive ``last_run_at`` is UTC."""
        return self.next_after(aware(last_run_at), self.tz) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        """``(due, seconds to the next check)``: due when the first tick after
        ``last_run_at`` has come; the seconds are then those to the tick after now."""
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if remaining == 0:
            return schedstate(True, max(self.remaining_estimate(self.now()).total_seconds(), 0.0))
        return schedstate(False, remaining)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, BaseSchedule):
            return other.nowfun == self.nowfun
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.nowfun)
