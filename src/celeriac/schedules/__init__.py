"""When periodic tasks run: Celery's ``schedule``, ``crontab`` and ``solar``.

::

    base.py       BaseSchedule (the contract), schedstate, the app's zone, wall time -> instants
    interval.py   schedule (every N seconds; ``relative`` rounds), maybe_schedule
    crontab.py    crontab
    cronspec.py   crontab_parser, ParseException: the fields' syntax
    solar.py      solar (needs ephem: ``pip install 'celeriac[solar]'``)

Beat asks a schedule one question: ``next_after(last, tz)``, the first tick
strictly after ``last``, as an aware UTC datetime; ``tz`` is the zone wall
times mean (the app's ``timezone``; a ``crontab(tz=...)`` keeps its own).
Celery's ``remaining_estimate`` and ``is_due`` are answered from it, with the
schedule's ``nowfun`` (or the clock) and its app's zone.

Wall clocks and DST
-------------------
A crontab (and a ``relative`` interval) names local wall times; clocks that
change for DST skip some and show others twice. celeriac's rules, Celery
5.7's but where marked *differs*:

* Wall times are taken in wall-clock order from ``last``'s own wall time
  (``last`` read in the schedule's zone): the tick is the first matching
  wall time after it.
* A wall time that does not exist (clocks spring forward over it) runs at
  the instant it would have been without the change: moved forward by the
  gap, so 02:30 in a 02:00 -> 03:00 change runs at 03:30 (new time). When
  that is also another matching wall time's instant (03:30), it runs once.
* A wall time shown twice (clocks go back) runs once, at its first showing.
  So a daily 01:30 runs once on the night clocks go back, and an
  every-15-minutes crontab does not run in the repeated hour's second pass
  (its wall times ran in the first).
* *Differs*: when ``last`` itself is in a second pass (a beat that started
  then, an entry added then), the next wall time in that pass runs at its
  second showing, the first after ``last``. Celery 5.7 returns the first
  showing, which is before ``last``: its ``remaining_estimate`` is negative
  and ``is_due`` answers "due, check again in 0 s" until the pass ends.
* *Differs*: a ``relative`` interval under one second: Celery truncates the
  tick to the second, which can put it at or before ``last``; celeriac's
  tick is always after ``last`` (the next whole second).
* *Differs*: Celery's ``relative`` rounding reads ``last`` in the zone it
  arrives in; celeriac always reads it in the schedule's zone.

An interval (not ``relative``) is elapsed time and ignores clocks. A
``relative`` one ticks at the latest round local time (whole days at
midnight, hours, minutes or seconds, by the interval's size) at or before
``last + run_every`` that is after ``last``; when a clock change leaves none
in between, at the first after ``last``; day intervals count calendar days.
"""

from __future__ import annotations

from .base import AppLike, BaseSchedule, schedstate
from .cronspec import ParseException, crontab_parser
from .crontab import crontab
from .interval import maybe_schedule, schedule
from .solar import solar

__all__ = [
    "AppLike",
    "BaseSchedule",
    "ParseException",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]
