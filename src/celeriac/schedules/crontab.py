"""``crontab``: ticks at the local wall-clock minutes that match five fields.

The next tick after ``last`` is found in two steps: the first wall time after
``last``'s own wall time (in the schedule's zone) whose minute, hour, day of
month, month and day of week all match; then the instant that wall time
means, by the DST rules of ``celeriac.schedules``. As in Celery (and unlike
cron, which ORs them) a day must match both ``day_of_month`` and
``day_of_week``.
"""

from __future__ import annotations

from bisect import bisect_left
from calendar import monthrange
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from .base import AppLike, BaseSchedule, NowFun, app_zone, as_zone, occurrences
from .cronspec import FIELDS, Cronspec

__all__ = ["crontab"]

_LONGEST_MONTH = {month: monthrange(2000, month)[1] for month in range(1, 13)}  # Feb: 29
_CALENDAR_CYCLE_YEARS = 400
"""Gregorian dates fall on the same weekdays every 400 years (146,097 days, whole weeks)."""


class crontab(BaseSchedule):  # noqa: N801 - Celery's name
    """Celery's crontab: each field a number, a pattern (``'*/15'``, ``'mon-fri'``,
    ``'1,15'``) or numbers; ``day_of_week`` counts from Sunday = 0.

    ``tz`` (celeriac's own) pins the zone the fields mean; without it they mean
    the app's ``timezone``. ``ValueError`` if no day of ``day_of_month`` occurs in
    any month of ``month_of_year`` (the 30th of February). ``is_due`` does not read
    ``beat_cron_starting_deadline``: celeriac's beat handles missed ticks with
    ``beat_catch_up``.
    """

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        nowfun: NowFun | None = None,
        app: AppLike | None = None,
        tz: str | tzinfo | None = None,
    ) -> None:
        self._orig_minute = "*" if minute is None else minute
        self._orig_hour = "*" if hour is None else hour
        self._orig_day_of_week = "*" if day_of_week is None else day_of_week
        self._orig_day_of_month = "*" if day_of_month is None else day_of_month
        self._orig_month_of_year = "*" if month_of_year is None else month_of_year
        self.minute = FIELDS["minute"].expand(minute)
        self.hour = FIELDS["hour"].expand(hour)
        self.day_of_week = FIELDS["day_of_week"].expand(day_of_week)
        self.day_of_month = FIELDS["day_of_month"].expand(day_of_month)
        self.month_of_year = FIELDS["month_of_year"].expand(month_of_year)
        if not any(
            day <= _LONGEST_MONTH[month]
            for month in self.month_of_year
            for day in self.day_of_month
        ):
            raise ValueError(
                f"invalid crontab: day_of_month {self._orig_day_of_month!r} never occurs in "
                f"month_of_year {self._orig_month_of_year!r}"
            )
        self._zone = as_zone(tz) if tz else None
        self._minutes = sorted(self.minute)
        self._hours = sorted(self.hour)
        self._days_of_month = sorted(self.day_of_month)
        self._months = sorted(self.month_of_year)
        super().__init__(nowfun=nowfun, app=app)

    @classmethod
    def from_string(cls, crontab: str) -> crontab:
        """A crontab from cron's five fields: ``'minute hour day_of_month month day_of_week'``."""
        fields = crontab.split()
        if len(fields) != 5:
            raise ValueError(f"a crontab string has 5 fields, not {len(fields)}: {crontab!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    @property
    def tz(self) -> tzinfo:
        """The crontab's own zone, else the app's."""
        return self._zone or app_zone(self.app)

    def next_after(self, last: datetime, tz: tzinfo) -> datetime:
        if last.tzinfo is None:
            raise ValueError(f"next_after needs an aware datetime, not {last!r}")
        zone = self._zone or tz
        last = last.astimezone(UTC)
        wall = self._next_wall(last.astimezone(zone).replace(tzinfo=None))
        # one showing is always later: wall is after last's own wall time
        return min(instant for instant in occurrences(wall, zone) if instant > last)

    def _next_wall(self, after: datetime) -> datetime:
        """The first matching naive wall time strictly after ``after`` (whole minutes)."""
        start = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        return next(
            datetime.combine(day, at)
            for day in self._dates(start.date())
            if (at := self._first_time(start.time() if day == start.date() else time())) is not None
        )

    def _dates(self, first: date) -> Iterator[date]:
        """The matching dates from ``first`` on, for one calendar cycle: a combination
        of fields that ever matches does within it (the constructor checked that the
        day and month fields meet; any such date falls on every weekday in a cycle)."""
        for year in range(first.year, first.year + _CALENDAR_CYCLE_YEARS):
            for month in self._months:
                if (year, month) < (first.year, first.month):
                    continue
                days_in_month = monthrange(year, month)[1]
                for day in self._days_of_month:
                    if day > days_in_month:
                        break
                    when = date(year, month, day)
                    if when >= first and when.isoweekday() % 7 in self.day_of_week:
                        yield when

    def _first_time(self, at_or_after: time) -> time | None:
        """The first matching time of day at or after ``at_or_after``, if any."""
        for hour in self._hours[bisect_left(self._hours, at_or_after.hour) :]:
            floor = at_or_after.minute if hour == at_or_after.hour else 0
            index = bisect_left(self._minutes, floor)
            if index < len(self._minutes):
                return time(hour, self._minutes[index])
        return None

    def __repr__(self) -> str:
        zone = f" {self._zone}" if self._zone else ""
        return (
            f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
            f"{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d){zone}>"
        )

    def __reduce__(self) -> tuple[type[crontab], tuple[Any, ...]]:
        fields = (
            self._orig_minute,
            self._orig_hour,
            self._orig_day_of_week,
            self._orig_day_of_month,
            self._orig_month_of_year,
        )
        return self.__class__, (*fields, self.nowfun, None, self._zone)

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, crontab):
            return (
                other.month_of_year == self.month_of_year
                and other.day_of_month == self.day_of_month
                and other.day_of_week == self.day_of_week
                and other.hour == self.hour
                and other.minute == self.minute
                and other._zone == self._zone
                and super().__eq__(other)
            )
        return NotImplemented

    def __hash__(self) -> int:
        fields = (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)
        return hash((*fields, self._zone, self.nowfun))
