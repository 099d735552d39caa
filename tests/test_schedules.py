"""``celeriac.schedules`` against Celery 5.7's own schedules, the oracle.

For each schedule and start time, celeriac's ``next_after(last, tz)`` must be
the instant Celery's ``last + remaining_estimate(last)`` names (``nowfun`` fixed
at ``last``, the zone given the Celery way: an app whose ``timezone`` is set).
The starts sweep the hours around each 2026 DST change of London, New York,
Sydney (southern hemisphere) and Lord Howe Island (half-hour changes), plus
a UTC control. Where celeriac differs
on purpose (see ``celeriac.schedules``), the case is named here and checked
to be exactly that case.
"""

from __future__ import annotations

import functools
import pickle
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac import Celeriac
from celeriac.schedules import (
    BaseSchedule,
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedstate,
    schedule,
    solar,
)

celery = pytest.importorskip("celery")
celery_schedules = pytest.importorskip("celery.schedules")

TRANSITIONS = {  # each zone's 2026 DST changes, as UTC instants
    "Europe/London": ("2026-03-29T01:00Z", "2026-10-25T01:00Z"),
    "America/New_York": ("2026-03-08T07:00Z", "2026-11-01T06:00Z"),
    "Australia/Sydney": ("2026-04-04T16:00Z", "2026-10-03T16:00Z"),
    "Australia/Lord_Howe": ("2026-04-04T15:00Z", "2026-10-03T15:30Z"),  # half-hour changes
    "UTC": ("2026-03-08T07:00Z",),  # the control: no change
}
ZONES = list(TRANSITIONS)


@functools.cache
def celery_app(zone: str) -> Any:
    app = celery.Celery("oracle", set_as_current=False)
    app.conf.timezone = zone
    return app


def celeriac_app(zone: str) -> Celeriac:
    return Celeriac("x", broker="memory://", set_as_current=False, timezone=zone)


def starts(zone: str) -> Iterator[datetime]:
    """Every 10 minutes for 5 hours either side of each change, and a few odd seconds."""
    for change in TRANSITIONS[zone]:
        at = datetime.fromisoformat(change)
        for minutes in range(-300, 301, 10):
            yield at + timedelta(minutes=minutes)
        for seconds in (-61, -1, 1, 59, 61, 1799, 3599, 3601):
            yield at + timedelta(seconds=seconds)


def clock(now: datetime) -> Callable[[], datetime]:
    """A ``nowfun`` stopped at ``now``."""
    return lambda: now


def celery_next(theirs: Any, last: datetime) -> datetime:
    """Celery's next tick after ``last``, as a UTC instant."""
    theirs.nowfun = clock(last)
    tick: datetime = last.astimezone(UTC) + theirs.remaining_estimate(last)
    return tick


def wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def test_the_transitions_are_dst_changes() -> None:
    """Guards the table: each instant changes its zone's UTC offset (but UTC's)."""
    for zone, changes in TRANSITIONS.items():
        for change in changes:
            at, z = datetime.fromisoformat(change), ZoneInfo(zone)
            before, after = (at + timedelta(seconds=s) for s in (-1, 0))
            assert (before.astimezone(z).utcoffset() != after.astimezone(z).utcoffset()) == (
                zone != "UTC"
            )


# -- crontab -----------------------------------------------------------------------------

CRONTABS: dict[str, dict[str, Any]] = {
    "every minute": {},
    "every 15 minutes": {"minute": "*/15"},
    "hourly at :30": {"minute": 30},
    "daily 02:00 (0 2 * * *)": {"minute": 0, "hour": 2},
    "daily 01:30 (in the repeated hour)": {"minute": 30, "hour": 1},
    "daily 02:30 (in the skipped hour)": {"minute": 30, "hour": 2},
    "weekdays 03:00": {"minute": 0, "hour": 3, "day_of_week": "mon-fri"},
    "1st and 15th": {"minute": 0, "hour": 0, "day_of_month": "1,15"},
    "quarterly": {"minute": 0, "hour": 0, "day_of_month": 1, "month_of_year": "*/3"},
    "sundays 02:00": {"minute": 0, "hour": 2, "day_of_week": "sun"},
    "Feb 29": {"minute": 0, "hour": 12, "day_of_month": 29, "month_of_year": 2},
    "every 31st": {"minute": 0, "hour": 0, "day_of_month": 31},
    "half hours 01:00-03:30": {"minute": "0,30", "hour": "1-3"},
    "hours 22-02 (wraps)": {"minute": 45, "hour": "22-2"},
    "weekend, even hours": {"minute": 5, "hour": "*/2", "day_of_week": "sat,sun"},
    "numbers, not patterns": {"minute": set(range(0, 60, 7)), "hour": [1, 2]},
    "first Sunday of November 01:30": {
        "minute": 30,
        "hour": 1,
        "day_of_week": "sun",
        "day_of_month": "1-7",
        "month_of_year": "nov",
    },
}


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("fields", CRONTABS.values(), ids=list(CRONTABS))
def test_crontab_next_after_is_celerys(fields: dict[str, Any], zone: str) -> None:
    ours = crontab(**fields)
    theirs = celery_schedules.crontab(app=celery_app(zone), **fields)
    z = ZoneInfo(zone)
    mismatches = []
    for last in starts(zone):
        expected, got = celery_next(theirs, last), ours.next_after(last, z)
        assert got.tzinfo is UTC and got > last
        if got == expected:
            continue
        # Deliberate: from a `last` in the second pass of a repeated hour, Celery 5.7 names
        # the wall time's first showing, which is before `last` (due at once, over and over
        # until the pass ends); celeriac names its second showing, the first after `last`.
        second_pass = last.astimezone(z).fold == 1
        if second_pass and expected <= last and wall(got, z) == wall(expected, z) > wall(last, z):
            assert got > last and got.astimezone(z).fold == 1
            continue
        mismatches.append(f"{wall(last, z)} ({last}): celery {expected}, celeriac {got}")
    assert not mismatches, "\n".join(mismatches)


def ny(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/New_York"))


@pytest.mark.parametrize(
    ("fields", "last", "ticks"),
    [
        # spring forward 02:00 -> 03:00: 02:30 does not exist and runs at 03:30 (EDT)
        ({"minute": 30, "hour": 2}, "2026-03-07 12:00", ["2026-03-08 07:30Z", "2026-03-09 06:30Z"]),
        # and the skipped 02:00, 02:15, ... run once, at 03:00: then 03:15 as usual
        ({"minute": "*/15"}, "2026-03-08 01:50", ["2026-03-08 07:00Z", "2026-03-08 07:15Z"]),
        # fall back 02:00 -> 01:00: a daily 01:30 runs once, at its first showing (EDT)
        ({"minute": 30, "hour": 1}, "2026-10-31 12:00", ["2026-11-01 05:30Z", "2026-11-02 06:30Z"]),
        # every 15 minutes: nothing in the second pass of 01:00-02:00 (it all ran in the first)
        ({"minute": "*/15"}, "2026-11-01 01:40", ["2026-11-01 05:45Z", "2026-11-01 07:00Z"]),
    ],
)
def test_crontab_dst_rules(fields: dict[str, Any], last: str, ticks: list[str]) -> None:
    ours, tick = crontab(**fields), ny(last)
    for expected in ticks:
        tick = ours.next_after(tick, ZoneInfo("America/New_York"))
        assert tick == datetime.fromisoformat(expected)


def test_crontab_from_a_second_pass_goes_on_in_it() -> None:
    """The deliberate difference, by itself: a beat started at 01:10 EST (second pass)."""
    last = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST
    ours = crontab(minute="*/15", app=celeriac_app("America/New_York"), nowfun=clock(last))
    theirs = celery_schedules.crontab(minute="*/15", app=celery_app("America/New_York"))
    theirs.nowfun = clock(last)
    assert ours.next_after(last, ZoneInfo("America/New_York")) == last + timedelta(minutes=5)
    assert ours.is_due(last) == (False, 300.0)
    assert theirs.remaining_estimate(last) == timedelta(minutes=-55)  # 01:15 EDT, in the past
    assert theirs.is_due(last) == (True, 0)


def test_crontab_remaining_estimate_and_is_due_are_celerys() -> None:
    cases: list[tuple[dict[str, Any], str, str, list[int]]] = [
        ({"minute": 0, "hour": 2}, "Europe/London", "2026-03-28T01:00Z", [0, 3600, 86400, 90000]),
        ({"minute": "*/15"}, "America/New_York", "2026-11-01T05:50Z", [0, 299, 300, 301, 5400]),
        ({"minute": 30, "hour": 2}, "Australia/Sydney", "2026-10-03T15:00Z", [0, 60, 1800, 5400]),
        ({"minute": 30, "day_of_week": "mon-fri"}, "UTC", "2026-03-06T23:40Z", [0, 20, 200000]),
    ]
    for fields, zone, last_text, offsets in cases:
        last = datetime.fromisoformat(last_text)
        for offset in offsets:
            now = last + timedelta(seconds=offset)
            ours = crontab(**fields, app=celeriac_app(zone), nowfun=clock(now))
            theirs = celery_schedules.crontab(**fields, app=celery_app(zone))
            theirs.nowfun = clock(now)
            assert ours.remaining_estimate(last) == theirs.remaining_estimate(last)
            assert ours.is_due(last) == tuple(theirs.is_due(last))


def test_crontab_tz_of_its_own_wins_over_the_apps() -> None:
    tokyo = crontab(minute=0, hour=9, tz="Asia/Tokyo", app=celeriac_app("Europe/London"))
    last = datetime(2026, 6, 1, tzinfo=UTC)  # 09:00 in Tokyo
    assert tokyo.next_after(last, ZoneInfo("Europe/London")) == datetime(2026, 6, 2, tzinfo=UTC)
    tokyo.nowfun = clock(last + timedelta(hours=1))
    assert tokyo.remaining_estimate(last) == timedelta(hours=23)
    assert tokyo != crontab(minute=0, hour=9)


# -- the crontab fields --------------------------------------------------------------------

GOOD_FIELDS = [
    ("minute", "*"), ("minute", "*/15"), ("minute", "1,13,30-45,50-59/2"), ("minute", 7),
    ("minute", [0, 30]), ("minute", " 5"), ("minute", "5 "), ("minute", "*/100"),
    ("hour", "0,8-17/2"), ("hour", "22-2"), ("hour", {1, 2}), ("hour", "05"),
    ("day_of_week", "mon-fri"), ("day_of_week", "sun"), ("day_of_week", "fri-mon"),
    ("day_of_week", "*/2"), ("day_of_week", "Monday"), ("day_of_week", "tues"),
    ("day_of_week", 0), ("day_of_week", "6"), ("day_of_month", "2-30/2"),
    ("day_of_month", "1-7,15-21"), ("day_of_month", 31), ("month_of_year", "*/3"),
    ("month_of_year", "jan-mar"), ("month_of_year", "Sept"), ("month_of_year", "2-12/2"),
    ("month_of_year", "nov-feb"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "spec"), GOOD_FIELDS)
def test_fields_expand_as_celerys(field: str, spec: Any) -> None:
    ours = getattr(crontab(**{field: spec}), field)
    assert ours == getattr(celery_schedules.crontab(**{field: spec}), field)


BAD_FIELDS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"minute": "60"}, ValueError), ({"minute": "-1"}, ValueError), ({"minute": ""}, ValueError),
    ({"minute": "1,"}, ValueError), ({"minute": "*/"}, ValueError), ({"minute": "*/0"}, ValueError),
    ({"minute": "0-59/0"}, ValueError), ({"minute": "1-5/"}, ValueError),
    ({"minute": "5/15"}, ValueError), ({"minute": "abc"}, ValueError),
    ({"minute": "*x"}, ValueError),
    ({"minute": "*/5x"}, ValueError), ({"minute": "1-5/2x"}, ValueError),
    ({"minute": 60}, ValueError), ({"minute": 1.5}, TypeError), ({"minute": [1, "2"]}, TypeError),
    ({"hour": "24"}, ValueError), ({"hour": "0-24"}, ValueError), ({"hour": -1}, ValueError),
    # 7 is not Sunday in Celery 5.7 (its range is 0-6), nor here
    ({"day_of_week": "7"}, ValueError), ({"day_of_week": 7}, ValueError),
    ({"day_of_week": "funday"}, ValueError), ({"day_of_month": "0"}, ValueError),
    ({"day_of_month": "32"}, ValueError), ({"month_of_year": "0"}, ValueError),
    ({"month_of_year": "13"}, ValueError), ({"month_of_year": "smarch"}, ValueError),
    ({"day_of_month": 30, "month_of_year": 2}, ValueError),
    ({"day_of_month": 31, "month_of_year": "4,6,9,11"}, ValueError),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "error"), BAD_FIELDS)
def test_bad_fields_raise_where_celery_raises(fields: dict[str, Any], error: type) -> None:
    # Celery's own ParseException is no ValueError; celeriac's is
    with pytest.raises((error, celery_schedules.ParseException)):
        celery_schedules.crontab(**fields)
    with pytest.raises(error) as raised:
        crontab(**fields)
    assert any(name in str(raised.value) for name in fields)  # the message names the field


NOT_AS_CELERY: list[tuple[dict[str, Any], bool, str]] = [
    # (fields, Celery accepts them, why celeriac does the other thing)
    ({"minute": "1-5 junk"}, True, "Celery reads a range and ignores what follows it"),
    ({"minute": "1-5-7"}, True, "the same: '-7' is ignored"),
    ({"day_of_week": "jan"}, True, "Celery takes a month name as a day of week (1)..."),
    ({"month_of_year": "mon"}, True, "...and a day name as a month (1)"),
    ({"minute": "jan"}, True, "...and either in numeric fields"),
    ({"day_of_week": "mondayXYZ"}, True, "Celery reads only a name's first three letters"),
    ({"minute": "+5"}, True, "Celery's int() takes a sign"),
    ({"minute": True}, True, "a bool is an int to Celery"),
    ({"minute": []}, True, "Celery fails later, in remaining_estimate (min() of nothing)"),
    ({"minute": " 1-5"}, False, "Celery strips spaces around a number but not a range..."),
    ({"minute": "0, 10-20"}, False, "...so '0, 10-20' fails there; celeriac strips each part"),
]


@pytest.mark.parametrize(("fields", "celery_accepts", "why"), NOT_AS_CELERY)
def test_fields_where_celeriac_is_stricter_or_kinder(
    fields: dict[str, Any], celery_accepts: bool, why: str
) -> None:
    try:
        celery_schedules.crontab(**fields)
        celery_did = True
    except (ValueError, TypeError, celery_schedules.ParseException):
        celery_did = False
    assert celery_did == celery_accepts, why
    if celery_accepts:
        with pytest.raises((ValueError, TypeError)):
            crontab(**fields)
    else:
        crontab(**fields)


def test_parser_is_celerys_class() -> None:
    assert crontab_parser(60).parse("*/15") == {0, 15, 30, 45}
    assert crontab_parser(12, 1).parse("2-12/2") == {2, 4, 6, 8, 10, 12}
    assert crontab_parser(7).parse("mon-fri") == {1, 2, 3, 4, 5}
    assert issubclass(crontab_parser.ParseException, ValueError)
    with pytest.raises(ParseException, match="out of range 0-59"):
        crontab_parser(60).parse("60")


def test_from_string_is_celerys() -> None:
    ours = crontab.from_string("30 1 1,15 */3 mon-fri")
    theirs = celery_schedules.crontab.from_string("30 1 1,15 */3 mon-fri")
    assert ours == crontab(30, 1, day_of_week="mon-fri", day_of_month="1,15", month_of_year="*/3")
    for field in ("minute", "hour", "day_of_week", "day_of_month", "month_of_year"):
        assert getattr(ours, field) == getattr(theirs, field)
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("30 1 * *")


# -- schedule (intervals) ------------------------------------------------------------------

INTERVALS = [10, 90, 900, 3600, 5400, 86400, 129600]  # seconds: 10 s ... 1.5 days


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("relative", [False, True])
def test_interval_next_after_is_celerys(relative: bool, zone: str) -> None:
    z = ZoneInfo(zone)
    mismatches = []
    for seconds in INTERVALS:
        ours = schedule(seconds, relative=relative)
        theirs = celery_schedules.schedule(seconds, relative=relative, app=celery_app(zone))
        for start in starts(zone):
            for last in (start.astimezone(z), (start + timedelta(seconds=37.25)).astimezone(z)):
                expected, got = celery_next(theirs, last), ours.next_after(last, z)
                if got != expected:
                    mismatches.append(f"every {seconds}s from {last}: {expected} != {got}")
    assert not mismatches, "\n".join(mismatches[:20])


def test_interval_remaining_estimate_and_is_due_are_celerys() -> None:
    last = datetime(2026, 3, 8, 6, 59, 55, tzinfo=ZoneInfo("America/New_York"))
    cases: list[tuple[float | timedelta, bool]] = [
        (timedelta(seconds=10), False),
        (3600, True),
        (86400, True),
    ]
    app = celeriac_app("America/New_York")
    for every, relative in cases:
        for offset in (0, 3.5, 10, 25, 3600, 90000):
            now = last + timedelta(seconds=offset)
            ours = schedule(every, relative=relative, app=app, nowfun=clock(now))
            theirs = celery_schedules.schedule(
                every, relative=relative, nowfun=clock(now), app=celery_app("UTC")
            )
            assert ours.remaining_estimate(last) == theirs.remaining_estimate(last)
            assert ours.is_due(last) == tuple(theirs.is_due(last))


def test_relative_under_a_second_stays_after_last() -> None:
    """Deliberate: Celery truncates a sub-second relative tick to the second, which can
    land at or before ``last`` (due at once); celeriac's is the next whole second."""
    last = datetime(2026, 1, 1, 12, 0, 0, 100000, tzinfo=UTC)
    theirs = celery_schedules.schedule(0.5, relative=True, app=celery_app("UTC"))
    assert celery_next(theirs, last) == last.replace(microsecond=0)
    ours = schedule(0.5, relative=True).next_after(last, UTC)
    assert ours == datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)


def test_interval_contract_edges() -> None:
    with pytest.raises(ValueError, match="positive"):
        schedule(0).next_after(datetime.now(UTC), UTC)
    with pytest.raises(ValueError, match="aware"):
        schedule(10).next_after(datetime(2026, 1, 1), UTC)
    assert schedule(10).remaining_estimate(datetime(2026, 1, 1)) < timedelta(0)  # naive: UTC


# -- solar ---------------------------------------------------------------------------------

PLACES = {
    "London": (51.5074, -0.1278),
    "New York": (40.7128, -74.006),
    "Sydney": (-33.8688, 151.2093),
    "Tromso (polar night, midnight sun)": (69.6496, 18.9560),
    "Quito (equator)": (-0.1807, -78.4678),
}
SOLAR_STARTS = [
    "2026-03-08T07:00:00+00:00",
    "2026-06-21T12:00:00+00:00",
    "2026-12-21T00:00:00+00:00",
]


@pytest.mark.parametrize("place", PLACES)
def test_solar_is_celerys_to_the_second(place: str) -> None:
    pytest.importorskip("ephem")
    lat, lon = PLACES[place]
    for event in solar.events:
        ours = solar(event, lat, lon)
        theirs = celery_schedules.solar(event, lat, lon, app=celery_app("UTC"))
        assert repr(ours) == repr(theirs)
        for text in SOLAR_STARTS:
            last = datetime.fromisoformat(text)
            got = ours.next_after(last, UTC)
            assert abs(got - celery_next(theirs, last)) < timedelta(seconds=1), (event, last)
            assert last < got < last + timedelta(days=120)  # Tromso's summer: no dark dawn


def test_solar_ticks_follow_each_other() -> None:
    pytest.importorskip("ephem")
    sunrise = solar("sunrise", 51.5074, -0.1278)
    tick = sunrise.next_after(datetime(2026, 3, 1, tzinfo=UTC), UTC)
    for _ in range(5):  # from a tick itself: the next day's, never the same one again
        following = sunrise.next_after(tick, UTC)
        assert timedelta(hours=23) < following - tick < timedelta(hours=25)
        tick = following
    now = tick + timedelta(minutes=1)
    ours = solar("sunrise", 51.5074, -0.1278, nowfun=clock(now))
    theirs = celery_schedules.solar("sunrise", 51.5074, -0.1278, app=celery_app("UTC"))
    theirs.nowfun = clock(now)
    last = tick - timedelta(hours=1)
    assert ours.is_due(last) == tuple(theirs.is_due(last))


def test_solar_without_ephem_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ephem", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'celeriac\[solar\]'"):
        solar("sunrise", 51.5, 0)


@pytest.mark.parametrize(
    ("event", "lat", "lon"), [("noon", 0, 0), ("sunrise", 91, 0), ("sunset", 0, -181)]
)
def test_solar_bad_arguments_raise_as_celery(event: str, lat: float, lon: float) -> None:
    pytest.importorskip("ephem")
    with pytest.raises(ValueError):
        celery_schedules.solar(event, lat, lon)
    with pytest.raises(ValueError, match=event if event == "noon" else "between"):
        solar(event, lat, lon)


# -- Celery's object API -------------------------------------------------------------------


def test_repr_is_celerys() -> None:
    pairs: list[tuple[BaseSchedule, Any]] = [
        (schedule(10), celery_schedules.schedule(10)),
        (schedule(5400), celery_schedules.schedule(5400)),
        (schedule(0), celery_schedules.schedule(0)),
        (crontab(minute="*/15", hour=[1, 2]), celery_schedules.crontab(minute="*/15", hour=[1, 2])),
        (crontab(0, 2, "sun"), celery_schedules.crontab(0, 2, "sun")),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
    assert repr(crontab(0, 2, tz="Asia/Tokyo")).endswith("(m/h/dM/MY/d) Asia/Tokyo>")


def test_equality_and_pickling() -> None:
    assert schedule(10) == timedelta(seconds=10) == schedule(timedelta(seconds=10))
    assert crontab(minute=0, hour="2") == crontab(minute="0", hour=[2]) != crontab(minute=1)
    assert len({crontab(minute=0), crontab(minute="0"), schedule(10), schedule(10.0)}) == 2
    originals: list[BaseSchedule] = [
        schedule(90, relative=True),
        crontab("*/15", "1-3", "mon-fri", tz=ZoneInfo("Europe/London")),
    ]
    for original in originals:
        copy = pickle.loads(pickle.dumps(original))
        assert copy == original and repr(copy) == repr(original)
    assert pickle.loads(pickle.dumps(originals[0])).relative


def test_maybe_schedule() -> None:
    app = celeriac_app("Europe/London")
    assert maybe_schedule(None) is None
    every = maybe_schedule(10, relative=True, app=app)
    assert isinstance(every, schedule) and every.relative and every.app is app
    assert maybe_schedule(timedelta(minutes=1)) == schedule(60)
    cron = crontab(minute=0, app=app)
    assert maybe_schedule(cron) is cron and cron.app is app  # no app given: kept
    assert maybe_schedule(cron, app=celeriac_app("UTC")) is cron and cron.app is not app
    with pytest.raises(TypeError):
        maybe_schedule("10")  # type: ignore[arg-type]


def test_the_zone_comes_from_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crontab().tz is UTC  # no app
    assert crontab(app=celeriac_app("America/New_York")).tz == ZoneInfo("America/New_York")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    local = Celeriac("x", broker="memory://", set_as_current=False, enable_utc=False)
    assert schedule(10, app=local).tz == ZoneInfo("Asia/Kolkata")
    assert isinstance(schedule(10).now(), datetime) and schedule(10).now().tzinfo is UTC
    state = schedstate(True, 5.0)
    assert state.is_due and state.next == 5.0 and state == (True, 5.0)
