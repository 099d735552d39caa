"""Beat's decisions without processes: entries, ticks, catch-up, ids, and one Beat on a broker."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.beat import Beat, BeatLazyFunc, beat_class, entries_from, tick_id
from celeriac.beat.plan import MAX_TICKS, plan
from celeriac.brokers import broker_from_url
from celeriac.brokers.beat_store import Lease
from celeriac.errors import ConfigurationError
from celeriac.schedules import crontab, schedule

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def every(seconds: float, name: str = "e") -> list:  # type: ignore[type-arg]
    return entries_from({name: {"task": "t", "schedule": seconds}})


def test_a_new_entry_starts_now_and_sends_nothing_yet() -> None:
    done = plan(every(10), {}, T0, UTC)
    assert done.due == [] and done.runs == {"e": T0} and done.wake == T0 + 10


def test_ticks_follow_the_schedule_not_the_moment_of_sending() -> None:
    entries = every(10)
    done = plan(entries, {"e": T0}, T0 + 13.7, UTC)
    assert [tick for _, tick in done.due] == [T0 + 10]
    assert done.runs == {"e": T0 + 10} and done.wake == T0 + 20


def test_a_crontab_entry_ticks_at_its_matches() -> None:
    entries = entries_from({"c": {"task": "t", "schedule": crontab(minute="*/15")}})
    done = plan(entries, {"c": T0}, T0 + 31 * 60, UTC)
    assert [tick for _, tick in done.due] == [T0 + 15 * 60, T0 + 30 * 60]


@pytest.mark.parametrize(
    ("catch_up", "sent"),
    [("all", [T0 + 10, T0 + 20, T0 + 30]), ("one", [T0 + 30]), ("none", [])],
)
def test_missed_ticks_follow_the_catch_up_rule(catch_up: str, sent: list[float]) -> None:
    done = plan(every(10), {"e": T0}, T0 + 35, UTC, catch_up)  # type: ignore[arg-type]
    assert [tick for _, tick in done.due] == sent
    assert done.runs == {"e": T0 + 30}  # skipped ticks are not sent later either


def test_a_long_outage_is_sent_in_chunks() -> None:
    done = plan(every(1), {"e": T0}, T0 + 5 * MAX_TICKS, UTC, "all")
    assert len(done.due) == MAX_TICKS and done.runs == {"e": T0 + MAX_TICKS}


def test_tick_ids_are_fixed_by_entry_and_tick() -> None:
    assert tick_id("e", T0) == tick_id("e", T0)
    assert len({tick_id("e", T0), tick_id("e", T0 + 1), tick_id("f", T0)}) == 3
    # The namespace is part of the format: a change would make a hand-over send new ids.
    assert tick_id("every-second", 1_700_000_000.0) == "1cc35f4a-a6f3-5df6-bbd1-97f0307e8b44"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "t", "schedule": 1, "sched": 2}, "unknown key"),
        ({"schedule": 1}, "'task' must be a task name"),
        ({"task": "t"}, "'schedule' must be"),
        ({"task": "t", "schedule": -1}, "must be positive"),
    ],
)
def test_a_wrong_entry_is_named(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        entries_from({"bad": spec})
    assert "'bad'" in str(caught.value)


def test_entry_forms_celery_accepts() -> None:
    (entry,) = entries_from(
        {
            "e": {
                "task": "t",
                "schedule": timedelta(minutes=5),
                "args": (1,),
                "kwargs": {"at": BeatLazyFunc(lambda: 42)},
                "options": {"queue": "q"},
            }
        }
    )
    assert isinstance(entry.schedule, schedule)
    assert entry.call_args() == ([1], {"at": 42})


def test_add_periodic_task_in_on_after_configure() -> None:
    app = Celeriac("periodic-api", broker="memory://periodic-api", set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.on_after_configure.connect
    def setup(sender: Celeriac, **_: object) -> None:
        sender.add_periodic_task(10.0, add.s(2, 2), name="add every 10")
        sender.add_periodic_task(crontab(hour=7, minute=30), add.s(1), args=(3,), queue="q")

    app.finalize()
    schedule_ = app.conf.beat_schedule
    assert schedule_["add every 10"]["args"] == (2, 2)
    unnamed = [key for key in schedule_ if key != "add every 10"]
    assert len(unnamed) == 1 and schedule_[unnamed[0]]["args"] == (3, 1)
    assert schedule_[unnamed[0]]["options"] == {"queue": "q"}
    assert {e.name for e in entries_from(schedule_)} == set(schedule_)


def test_beat_scheduler_takes_a_beat_subclass_not_a_path() -> None:
    class FromDatabase(Beat):
        pass

    app = Celeriac("scheduler", broker="memory://scheduler", set_as_current=False)
    assert beat_class(app) is Beat
    app.conf.beat_scheduler = FromDatabase
    assert beat_class(app) is FromDatabase
    app.conf.beat_scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    with pytest.raises(ConfigurationError, match=r"subclass of celeriac\.beat\.Beat"):
        beat_class(app)


async def test_two_beats_in_one_process_one_leads_and_the_other_takes_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two Beat objects on one SQLite file: only the leader sends; when it stops (and gives
    the lease up) the other goes on from the stored last run, with no tick twice."""
    url = f"sqlite:///{tmp_path / 'beat.db'}"
    schedule_ = {"fast": {"task": "t", "schedule": 0.2}}
    apps = [
        Celeriac(f"b{n}", broker=url, backend=url, beat_schedule=schedule_, set_as_current=False)
        for n in range(2)
    ]
    first, second = Beat(apps[0], "first"), Beat(apps[1], "second")
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    caplog.set_level(logging.INFO, "celeriac.beat")
    running = asyncio.gather(first.run(stop_first), second.run(stop_second))
    await asyncio.sleep(1.5)
    assert (first.lease is None) != (second.lease is None)
    leader, standby, stop_leader = (
        (first, second, stop_first) if first.lease else (second, first, stop_second)
    )
    stop_leader.set()
    await asyncio.sleep(1.5)
    assert standby.lease is not None and leader.sent > 0 and standby.sent > 0
    stop_first.set()
    stop_second.set()
    await running

    broker = broker_from_url(url)
    await broker.connect()
    consumer = broker.consumer(["celery"], "test")
    ids = [d.message.id for d in await consumer.fetch(1000, 0.5)]
    await consumer.close()
    await broker.close()
    assert len(ids) == len(set(ids)) == leader.sent + standby.sent
    assert 12 <= len(ids) <= 16  # 3 s of 0.2 s ticks, less the first interval


@pytest.mark.parametrize(("idle_for", "expected"), [(None, "all"), (1.0, "all"), (60.0, "none")])
def test_a_hand_over_sends_every_missed_tick_and_an_outage_follows_the_setting(
    idle_for: float | None, expected: str
) -> None:
    app = Celeriac(
        "catch-up", broker="memory://catch-up", beat_catch_up="none", set_as_current=False
    )
    beat = Beat(app, "b")
    idle_since = None if idle_for is None else time.time() - idle_for
    assert beat._catch_up(Lease("b", 2, time.monotonic() + 5, idle_since)) == expected


async def ran(beat: Beat, seconds: float) -> Beat:
    """``beat`` after running for ``seconds`` and stopping (it gives the lease up)."""
    stop = asyncio.Event()
    running = asyncio.create_task(beat.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await running
    return beat


async def test_a_changed_schedule_goes_on_from_the_stored_last_run(tmp_path: Path) -> None:
    """A restart with another interval for the same entry name keeps its history: the
    new interval counts from the last run the first beat stored."""
    url = f"sqlite:///{tmp_path / 'beat.db'}"

    def app(seconds: float) -> Celeriac:
        entries = {"e": {"task": "t", "schedule": seconds}}
        return Celeriac("b", broker=url, backend=url, beat_schedule=entries, set_as_current=False)

    hourly = await ran(Beat(app(3600), "first"), 0.3)
    assert hourly.sent == 0 and set(hourly.runs) == {"e"}
    started = hourly.runs["e"]

    await asyncio.sleep(0.5)
    fast = await ran(Beat(app(0.1), "second"), 0.3)
    # Ticks from the first beat's start, 0.1 s apart: the 0.5 s between the beats too.
    assert fast.sent >= 7
    assert fast.runs["e"] == pytest.approx(started + 0.1 * (fast.sent), abs=1e-6)
