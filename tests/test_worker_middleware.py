"""The user's middleware: ``worker_middleware``, placed among the defaults, run by real workers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from celeriac import Celeriac
from celeriac.brokers.base import Delivery
from celeriac.errors import ConfigurationError
from celeriac.execution import Outcome
from celeriac.testing import WorkerProcess, memory_app, worker_thread
from celeriac.worker import TaskConsumer, choose_config
from celeriac.worker.context import WorkerContext
from celeriac.worker.job import Job
from celeriac.worker.middleware import (
    Callbacks,
    Expiry,
    Middleware,
    Placement,
    Results,
    Retries,
    Skip,
    TaskLog,
    default_middleware,
    middleware_for,
    ordered_middleware,
)
from celeriac.worker.process import build_consumer
from tests.apps import with_middleware

ROOT = Path(__file__).resolve().parent.parent

Event = tuple[str, str, str]


class Recorder(Middleware):
    """Appends ``(name, hook, detail)`` to ``events`` from each hook."""

    def __init__(self, name: str, events: list[Event]) -> None:
        self.name = name
        self.events = events

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | None:
        self.events.append((self.name, "before_task", job.name))
        return None

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        self.events.append((self.name, "after_task", f"{job.name} {outcome.state}"))
        return outcome

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        self.events.append((self.name, "dead_lettered", reason))


class A(Middleware):
    pass


class B(Middleware):
    pass


def names(chain: list[Middleware]) -> list[str]:
    return [getattr(m, "name", type(m).__name__) for m in chain]


DEFAULTS = names(default_middleware())


# -- ordered_middleware ---------------------------------------------------------------


def test_no_user_middleware_is_the_default_list() -> None:
    assert names(ordered_middleware(default_middleware(), [])) == DEFAULTS
    assert names(middleware_for(memory_app())) == DEFAULTS


def test_plain_entries_go_at_the_end_in_order_and_classes_are_instantiated() -> None:
    events: list[Event] = []
    chain = ordered_middleware(default_middleware(), [Recorder("x", events), A])
    assert names(chain) == [*DEFAULTS, "x", "A"]
    again = ordered_middleware(default_middleware(), [A])
    assert isinstance(chain[-1], A) and again[-1] is not chain[-1]  # one instance per worker


def test_before_and_after_a_default() -> None:
    events: list[Event] = []
    chain = ordered_middleware(
        default_middleware(),
        [
            Placement(Recorder("first", events), before=Expiry),
            Placement(Recorder("r1", events), after=Retries),
            Placement(Recorder("r2", events), after=Retries),  # after r1: the order given
            Placement(Recorder("pre-results", events), before=Results),
            Placement(A, after=TaskLog),
            Placement(B, before=A),  # an anchor placed earlier
            Placement(Recorder("end", events)),
        ],
    )
    assert names(chain) == [
        "RelayedDuplicates",
        "Revoked",
        "first",
        "Expiry",
        "WorkerLost",
        "RateLimits",
        "Retries",
        "r1",
        "r2",
        "Callbacks",
        "pre-results",
        "Results",
        "Chords",
        "Errbacks",
        "Handlers",
        "TaskLog",
        "B",
        "A",
        "RemoteControl",
        "Backlog",
        "Events",
        "Signals",
        "end",
    ]


def test_an_anchor_that_is_not_there_says_what_is() -> None:
    with pytest.raises(ConfigurationError) as info:
        ordered_middleware(default_middleware(), [Placement(A, before=B)])
    message = str(info.value)
    assert "cannot place A next to B" in message
    assert "Expiry, WorkerLost, RateLimits" in message
    with pytest.raises(ConfigurationError, match="runs no Callbacks"):
        ordered_middleware([Expiry()], [Placement(A, after=Callbacks)])


def test_bad_entries_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        ordered_middleware(default_middleware(), [Placement(A, before=Expiry, after=Results)])
    with pytest.raises(ConfigurationError, match="not its import path"):
        ordered_middleware(default_middleware(), ["myproj.middleware.Audit"])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="Middleware instances or subclasses"):
        ordered_middleware(default_middleware(), [object()])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="take a Middleware subclass"):
        ordered_middleware(default_middleware(), [Placement(A, before=Expiry())])  # type: ignore[arg-type]


def test_the_setting_refuses_import_paths() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match=r"not import paths like 'proj\.Audit'"):
        app.conf.update(worker_middleware=["proj.Audit"])
    with pytest.raises(ConfigurationError, match="not import paths"):
        app.conf.update(worker_middleware="proj.Audit")
    with pytest.raises(ConfigurationError, match="not import paths"):
        app.conf.load_environment({"CELERIAC_WORKER_MIDDLEWARE": "proj.Audit"})
    app.conf.update(worker_middleware=(A, Placement(B, before=Results)))
    assert names(middleware_for(app))[-1] == "A"


def test_a_bad_placement_stops_build_consumer() -> None:
    app = memory_app(worker_middleware=[Placement(A, before=B)])
    with pytest.raises(ConfigurationError, match="cannot place A"):
        build_consumer(app, choose_config(app, pool="solo"), child=False)


# -- in a real worker -------------------------------------------------------------------


@contextlib.contextmanager
def built_worker(app: Celeriac) -> Iterator[TaskConsumer]:
    """``build_consumer`` (what ``celeriac worker`` runs) on a thread of its own."""
    consumer = build_consumer(app, choose_config(app, pool="thread", concurrency=2), child=False)

    async def run() -> None:
        try:
            await consumer.run()
        finally:
            await app.aclose()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.request_stop("test over")
        thread.join(20)


def _worker_thread(app: Celeriac) -> contextlib.AbstractContextManager[TaskConsumer]:
    return worker_thread(app, concurrency=2)


RUNNERS = [
    pytest.param(built_worker, id="build_consumer"),
    pytest.param(_worker_thread, id="worker_thread"),
]


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def hooks(events: list[Event], hook: str, detail_prefix: str = "") -> list[tuple[str, str]]:
    return [(n, d) for n, h, d in events if h == hook and d.startswith(detail_prefix)]


@pytest.mark.parametrize("runner", RUNNERS)
def test_user_hooks_run_in_a_worker_where_they_were_placed(
    runner: Callable[[Celeriac], contextlib.AbstractContextManager[TaskConsumer]],
) -> None:
    events: list[Event] = []

    class Last(Recorder):
        def __init__(self) -> None:
            super().__init__("last", events)

    app = memory_app()
    app.conf.worker_middleware = [
        Placement(Recorder("first", events), before=Expiry),
        Placement(Recorder("after_retries", events), after=Retries),
        Last,
    ]

    @app.task(
        name="flaky",
        autoretry_for=(ValueError,),
        retry_kwargs={"countdown": 0, "max_retries": 1},
    )
    def flaky() -> None:
        raise ValueError("always")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    with runner(app):
        flaky.delay().get(timeout=10, propagate=False)
        expired = add.apply_async((1, 2), expires=datetime.now(UTC) - timedelta(minutes=1))
        expired.get(timeout=10, propagate=False)
        app.send_task("no.such.task")
        wait_for(lambda: len(hooks(events, "after_task", "flaky")) == 6)
        wait_for(lambda: len(hooks(events, "after_task", "add")) == 3)
        wait_for(lambda: len(hooks(events, "dead_lettered")) == 3)

    # after_task: before Retries a failure is a FAILURE; after it, the first one is a RETRY.
    assert hooks(events, "after_task", "flaky") == [
        ("first", "flaky FAILURE"),
        ("after_retries", "flaky RETRY"),
        ("last", "flaky RETRY"),
        ("first", "flaky FAILURE"),  # the retry fails for good
        ("after_retries", "flaky FAILURE"),
        ("last", "flaky FAILURE"),
    ]
    # before_task: Expiry skips the expired task, so only what runs before it sees it.
    assert hooks(events, "before_task", "add") == [("first", "add")]
    assert hooks(events, "after_task", "add") == [
        ("first", "add REVOKED"),
        ("after_retries", "add REVOKED"),
        ("last", "add REVOKED"),
    ]
    dead = hooks(events, "dead_lettered")
    assert [n for n, _ in dead] == ["first", "after_retries", "last"]
    assert all("unknown task" in reason for _, reason in dead), dead


@pytest.mark.slow
def test_user_hooks_run_in_a_solo_worker_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/mw.db"
    log = tmp_path / "hooks.jsonl"
    env = {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": url,
        "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "5",
        "MIDDLEWARE_LOG": str(log),
    }
    app = with_middleware.app
    app.conf.update(broker_url=url, result_backend=url)

    def events() -> list[Event]:
        if not log.exists():
            return []
        rows = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        return [(name, hook, detail) for name, hook, detail in rows]

    try:
        with WorkerProcess(
            "tests.apps.with_middleware", "-P", "solo", cwd=ROOT, env=env, log=tmp_path / "w.log"
        ) as worker:
            with_middleware.flaky.delay().get(timeout=20, propagate=False)
            app.send_task("no.such.task")
            wait_for(lambda: len(hooks(events(), "after_task", "tests.")) == 6, timeout=20)
            wait_for(lambda: len(hooks(events(), "dead_lettered")) == 3, timeout=20)
    finally:
        app.close()
    banner = worker.log()
    assert (
        "middleware:  RelayedDuplicates, Revoked, FileRecorder, Expiry, WorkerLost, RateLimits, "
        "Retries, FileRecorder, Callbacks, Results, Chords, Errbacks, Handlers, TaskLog, "
        "RemoteControl, Backlog, Events, Signals, FileRecorder"
    ) in banner
    assert f"(storage sqlite:{tmp_path}/mw.db)" in banner
    name = "tests.apps.with_middleware.flaky"
    assert hooks(events(), "after_task", name) == [
        ("first", f"{name} FAILURE"),
        ("after_retries", f"{name} RETRY"),
        ("last", f"{name} RETRY"),
        ("first", f"{name} FAILURE"),
        ("after_retries", f"{name} FAILURE"),
        ("last", f"{name} FAILURE"),
    ]
    assert [n for n, _ in hooks(events(), "before_task", name)] == [
        "first",
        "after_retries",
        "last",
    ] * 2
    dead = hooks(events(), "dead_lettered")
    assert [n for n, _ in dead] == ["first", "after_retries", "last"]
    assert all("unknown task" in reason for _, reason in dead), dead


def test_app_add_middleware_places_it_for_the_apps_workers() -> None:
    app = memory_app()
    events: list[Event] = []
    app.add_middleware(Recorder("first", events), before=Expiry)
    app.add_middleware(Recorder("last", events))

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        chain = names(middleware_for(app))
        assert chain == [*DEFAULTS[:2], "first", *DEFAULTS[2:], "last"]
        with worker_thread(app):
            assert add.delay(1, 2).get(timeout=10) == 3
        name = add.name
        assert ("first", "before_task", name) in events
        assert ("last", "after_task", f"{name} SUCCESS") in events
    finally:
        app.close()
