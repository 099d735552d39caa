"""``schedule``: ticks a fixed interval apart, optionally on round local times (``relative``)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from .base import AppLike, BaseSchedule, NowFun, occurrences, schedstate

__all__ = ["maybe_schedule", "schedule"]

_UNITS = (timedelta(days=1), timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1))
_TIME_UNITS = ((86400.0, "day"), (3600.0, "hour"), (60.0, "minute"), (1.0, "second"))


class schedule(BaseSchedule):  # noqa: N801 - Celery's name
    """Every ``run_every`` (seconds or a timedelta).

    The next tick is ``last + run_every`` in elapsed time. With ``relative`` it is
    rounded down to the interval's unit of local wall time (its largest of day,
    hour, minute, second), as Celery's ``relative`` is: ``schedule(3600,
    relative=True)`` ticks on the hour. An interval of zero or less can be made
    (as in Celery) but has no next tick: ``next_after`` raises ``ValueError``.
    """

    def __init__(
        self,
        run_every: float | timedelta,
        relative: bool = False,
        nowfun: NowFun | None = None,
        app: AppLike | None = None,
    ) -> None:
        self.run_every = (
            run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)
        )
        self.relative = relative
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0.0)

    @property
    def human_seconds(self) -> str:
        """The interval as Celery writes it: ``'10.00 seconds'``, ``'1.00 hour'``."""
        secs = round(self.seconds, 2)
        for size, unit in _TIME_UNITS:
            if secs >= size:
                count = secs / size
                return f"{count:.2f} {unit}{'' if count == 1 else 's'}"
        return "now"

    def next_after(self, last: datetime, tz: tzinfo) -> datetime:
        if last.tzinfo is None:
            raise ValueError(f"next_after needs an aware datetime, not {last!r}")
        if self.run_every <= timedelta(0):
            raise ValueError(f"the interval must be positive, not {self.run_every}")
        last = last.astimezone(UTC)
        if not self.relative:
            return last + self.run_every
        unit = next((unit for unit in _UNITS if self.run_every >= unit), _UNITS[-1])
        if unit == _UNITS[0]:
            return _next_midnight(last, self.run_every, tz)
        return _next_boundary(last, self.run_every, unit, tz)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Celery's: when due, check again one interval later, or for ``relative``
        at the next round time after now."""
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if remaining > 0:
            return schedstate(False, remaining)
        if self.relative:
            following = self.remaining_estimate(self.now()).total_seconds()
            return schedstate(True, following if following > 0 else self.seconds)
        return schedstate(True, self.seconds)

    def __repr__(self) -> str:
        return f"<freq: {self.human_seconds}>"

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return bool(self.run_every == other)

    def __hash__(self) -> int:
        return hash(self.run_every)  # equal to its timedelta, as Celery's schedule is

    def __reduce__(self) -> tuple[type[schedule], tuple[timedelta, bool, NowFun | None]]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def _floor(wall: datetime, unit: timedelta) -> datetime:
    seconds = (wall - datetime.combine(wall.date(), time())).total_seconds()
    return datetime.combine(wall.date(), time()) + unit * (seconds // unit.total_seconds())


def _next_midnight(last: datetime, every: timedelta, zone: tzinfo) -> datetime:
    """Day intervals count calendar days: local midnight of the day ``every`` after
    ``last`` on the wall clock (its first showing after ``last``)."""
    day = (last.astimezone(zone).replace(tzinfo=None) + every).date()
    return min(t for t in occurrences(datetime.combine(day, time()), zone) if t > last)


def _next_boundary(last: datetime, every: timedelta, unit: timedelta, zone: tzinfo) -> datetime:
    """The latest round local time (a whole ``unit``) by ``last + every`` if it is
    after ``last``; else, when a clock change left none in between, the first after."""
    end = last + every
    wall = _floor(end.astimezone(zone).replace(tzinfo=None), unit)
    by_end = [t for t in occurrences(wall, zone) if t <= end]
    if by_end and max(by_end) > last:
        return max(by_end)
    return min(t for t in occurrences(wall + unit, zone) if t > last)


def maybe_schedule(
    s: float | timedelta | BaseSchedule | None, relative: bool = False, app: AppLike | None = None
) -> BaseSchedule | None:
    """A schedule from seconds, a timedelta or a schedule; None stays None. A schedule
    is given ``app`` when one is passed (Celery also clears its app when none is)."""
    if s is None:
        return None
    if isinstance(s, BaseSchedule):
        if app is not None:
            s.app = app
        return s
    if isinstance(s, timedelta | int | float):
        return schedule(s, relative, app=app)
    raise TypeError(f"a schedule is seconds, a timedelta or a schedule, not {s!r}")
