"""Monitoring events: Celery's fields, from real workers, on every broker; never in a task's way.

The oracle is a real Celery 5.7 worker (``tests.apps.events_celery``, with
``-E`` and ``task_send_sent_event``) on Redis, read by Celery's own
``app.events.Receiver``: each celeriac event must carry exactly the fields
Celery's event of the same type carries, and ``celeriac events --dump`` must
print the lines Celery's dumper prints for the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.memory_operations import MemoryOperations
from celeriac.cli import main
from celeriac.errors import ConfigurationError
from celeriac.events import Dumper, EventDispatcher, EventReceiver
from celeriac.testing import WorkerProcess, memory_app, worker_thread
from celeriac.worker.middleware import Events

from .apps.events_celeriac import make_app
from .services import rabbitmq_url, redis_url
from .worker_processes import ROOT, wait_for

celery = pytest.importorskip("celery")

TIMEOUT = 30.0
ORACLE_DB = 10
"""The Redis database of the Celery oracle (pub/sub events, one queue of its own)."""
TASK_TYPES = frozenset(
    {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
    }
)
WORKER_TYPES = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})


def send_the_tasks(send: Any, queue: str | None = None) -> None:
    """The calls that make every kind of task event, through ``send(name, args, **options)``."""
    options = {"queue": queue} if queue else {}
    send("events.add", (2, 3), **options)
    send("events.boom", (), **options)
    send("events.flaky", (), **options)
    send("events.refuse", (), **options)
    send("events.add", (1, 1), expires=datetime.now(UTC) - timedelta(seconds=5), **options)


def complete(events: Sequence[dict[str, Any]]) -> bool:
    """Every type was seen, and both add and flaky succeeded."""
    seen = {e["type"] for e in events}
    succeeded = sum(e["type"] == "task-succeeded" for e in events)
    return TASK_TYPES | {"worker-online", "worker-heartbeat"} <= seen and succeeded >= 2


def fields_by_type(events: Sequence[dict[str, Any]]) -> dict[str, frozenset[str]]:
    by_type: dict[str, frozenset[str]] = {}
    for event in events:
        by_type.setdefault(event["type"], frozenset(event))
    return by_type


# --- the oracle: a Celery worker's events, read by Celery ------------------------------


@pytest.fixture(scope="module")
def celery_events() -> list[dict[str, Any]]:
    """Every event a Celery worker and client sent for :func:`send_the_tasks`, in order."""
    broker = redis_url(prefixed=False, db=ORACLE_DB)
    from .apps import events_celery

    app = events_celery.app
    app.conf.broker_url = broker
    queue = f"events-oracle-{os.getpid()}"
    events: list[dict[str, Any]] = []
    listening, stop = threading.Event(), threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            listening.set()
            for _ in receiver.itercapture(limit=None, timeout=None, wakeup=False):
                if stop.is_set():
                    return

    threading.Thread(target=listen, daemon=True).start()
    assert listening.wait(TIMEOUT)
    command = ["celery", "-A", "tests.apps.events_celery", "worker", "-P", "solo", "-Q", queue]
    command += ["-E", "-l", "error", "--without-gossip", "--without-mingle"]
    with subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "EVENTS_BROKER": broker}, stderr=subprocess.DEVNULL
    ) as worker:
        try:
            wait_for(lambda: any(e["type"] == "worker-online" for e in events), TIMEOUT, "online")
            send_the_tasks(app.send_task, queue)
            wait_for(lambda: complete(events), TIMEOUT, "every Celery event")
        finally:
            worker.terminate()
            worker.wait(TIMEOUT)
    wait_for(lambda: any(e["type"] == "worker-offline" for e in events), TIMEOUT, "offline")
    stop.set()
    app.close()
    with redis.Redis.from_url(broker) as client:  # kombu's bindings of the queue, and the queue
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    return events


# --- celeriac's events, read by celeriac --------------------------------------------------


@contextlib.contextmanager
def captured(app: Celeriac) -> Iterator[list[dict[str, Any]]]:
    """The events sent on ``app``'s broker during the block, read by an ``EventReceiver``
    on a loop of its own (the list grows while the block runs)."""
    events: list[dict[str, Any]] = []
    listening, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def listen() -> None:
        broker = await app.abroker()
        try:
            async with EventReceiver(broker.operations()) as receiver:
                listening.set()
                while not stop.is_set():
                    async for event in receiver.capture(timeout=0.1):
                        events.append(event)
        finally:
            await app.aclose()

    def main() -> None:
        try:
            asyncio.run(listen())
        except BaseException as exc:
            failure.append(exc)
            listening.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert listening.wait(TIMEOUT)
    if failure:
        raise failure[0]
    try:
        yield events
    finally:
        stop.set()
        thread.join(TIMEOUT)
    if failure:
        raise failure[0]


def _sqlite(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    return url, url


def _memory(tmp_path: Path) -> tuple[str, str]:
    url = f"memory://events-{os.getpid()}-{time.monotonic_ns()}"
    return url, url


def _redis(tmp_path: Path) -> tuple[str, str]:
    return redis_url(), redis_url()


def _amqp(tmp_path: Path) -> tuple[str, str]:
    return rabbitmq_url(), redis_url()


@pytest.fixture(params=[_memory, _sqlite, _redis, _amqp], ids=["memory", "sqlite", "redis", "amqp"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    factory = request.param
    return factory(tmp_path)  # type: ignore[no-any-return]


def celeriac_events(broker: str, backend: str) -> list[dict[str, Any]]:
    """Every event a celeriac worker (thread pool) and client sent for :func:`send_the_tasks`."""
    app = make_app(broker, backend, worker_send_task_events=True, task_send_sent_event=True)
    with captured(app) as events:
        with worker_thread(app, concurrency=2):
            send_the_tasks(app.send_task)
            wait_for(lambda: complete(events), TIMEOUT, "every celeriac event")
        wait_for(lambda: any(e["type"] == "worker-offline" for e in events), TIMEOUT, "offline")
    app.close()
    return events


def test_every_event_carries_the_fields_celery_sends(
    urls: tuple[str, str], celery_events: list[dict[str, Any]]
) -> None:
    events = celeriac_events(*urls)
    theirs, ours = fields_by_type(celery_events), fields_by_type(events)
    assert set(theirs) == TASK_TYPES | WORKER_TYPES
    differences = {
        type_: {
            "missing": sorted(theirs[type_] - ours[type_]),
            "extra": sorted(ours[type_] - theirs[type_]),
        }
        for type_ in theirs
        if ours.get(type_) != theirs[type_]
    }
    assert differences == {}

    def one(type_: str, **match: Any) -> dict[str, Any]:
        return next(e for e in events if e["type"] == type_ and match.items() <= e.items())

    add = one("task-received", name="events.add", args="(2, 3)")
    assert one("task-succeeded", uuid=add["uuid"])["result"] == "5"
    boom = one("task-received", name="events.boom")
    failed = one("task-failed", uuid=boom["uuid"])
    assert failed["exception"] == "ValueError('boom')" and "ValueError: boom" in failed["traceback"]
    flaky = one("task-received", name="events.flaky", retries=1)
    assert "KeyError('once')" in one("task-retried", uuid=flaky["uuid"])["exception"]
    refuse = one("task-received", name="events.refuse")
    assert one("task-rejected", uuid=refuse["uuid"])["requeue"] is False
    assert one("task-revoked")["expired"] is True
    sent = one("task-sent", name="events.add", args="(2, 3)")
    assert (sent["uuid"], sent["queue"], sent["routing_key"]) == (add["uuid"], "celery", "celery")
    offline = one("worker-offline")
    assert offline["sw_ident"] == "py-celeriac"
    assert offline["processed"] >= 5 and offline["active"] == 0
    worker = [e for e in events if e["hostname"] == offline["hostname"]]
    clocks = [e["clock"] for e in worker]
    assert clocks == sorted(clocks), "a sender's clock only moves forward"


def test_without_task_events_a_worker_sends_only_its_own(celeriac_app: Celeriac) -> None:
    """As a Celery worker without ``-E``: online, heartbeats, offline; no task events."""

    @celeriac_app.task
    def add(x: int, y: int) -> int:
        return x + y

    with captured(celeriac_app) as events:
        with worker_thread(celeriac_app):
            assert add.delay(1, 2).get(timeout=TIMEOUT) == 3
        wait_for(lambda: any(e["type"] == "worker-offline" for e in events), TIMEOUT, "offline")
    assert {e["type"] for e in events} == {"worker-online", "worker-offline"}


def test_enable_events_and_disable_events_switch_task_events_at_run_time(
    celeriac_app: Celeriac,
) -> None:
    """Celery's remote commands (Flower sends ``enable_events``), on a worker without -E."""

    @celeriac_app.task
    def add(x: int, y: int) -> int:
        return x + y

    def task_events(events: list[dict[str, Any]]) -> list[str]:
        return [e["type"] for e in events if e["type"].startswith("task-")]

    with captured(celeriac_app) as events, worker_thread(celeriac_app):
        assert add.delay(1, 1).get(timeout=TIMEOUT) == 2
        assert task_events(events) == []
        replies = celeriac_app.control.enable_events(reply=True)
        assert replies and list(replies[0].values()) == [{"ok": "task events enabled"}]
        assert add.delay(1, 2).get(timeout=TIMEOUT) == 3
        wait_for(lambda: "task-succeeded" in task_events(events), TIMEOUT, "task events")
        replies = celeriac_app.control.disable_events(reply=True)
        assert replies and list(replies[0].values()) == [{"ok": "task events disabled"}]
        seen = len(task_events(events))
        assert add.delay(1, 3).get(timeout=TIMEOUT) == 4
    assert len(task_events(events)) == seen


# --- never in a task's way ---------------------------------------------------------------


class Stuck(MemoryOperations):
    """An operations plane whose event publishes hang until released: a broker too slow."""

    release: threading.Event = threading.Event()
    """Set from any thread (the test's, while the worker's loop is stuck)."""

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
        await super().send_events(events)


class Refusing(MemoryOperations):
    """An operations plane whose event publishes fail: a broker that refuses them."""

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        raise ConnectionError("broker down")


async def test_a_stuck_broker_drops_events_past_the_buffer_and_counts_them() -> None:
    Stuck.release = threading.Event()
    dispatcher = EventDispatcher(Stuck("memory://stuck"), "w@h", buffer_limit=10, batch_size=5)
    dispatcher.start()
    started = time.perf_counter()
    for _ in range(1000):
        dispatcher.send("task-started", uuid="x")
    assert time.perf_counter() - started < 0.5, "sending never waits for the broker"
    await asyncio.sleep(0.05)  # the flusher took a batch and hangs in its publish
    stats = dispatcher.statistics()
    assert stats.sent == 0 and stats.dropped > 900 and stats.dropped + stats.buffered + 5 == 1000
    Stuck.release.set()
    await dispatcher.close()
    assert dispatcher.statistics().sent + dispatcher.statistics().dropped == 1000


async def test_a_refused_batch_is_dropped_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EventDispatcher(Refusing("memory://refusing"), "w@h", batch_size=3)
    for _ in range(10):
        dispatcher.send("task-started", uuid="x")
    await dispatcher.flush()
    assert dispatcher.statistics().failed == 10
    lost = [r for r in caplog.records if "event(s) lost" in r.getMessage()]
    assert len(lost) == 1 and "broker down" in lost[0].getMessage()


def test_tasks_finish_promptly_while_the_broker_takes_no_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Stuck.release = threading.Event()
    monkeypatch.setattr(MemoryBroker, "_make_operations", lambda self: Stuck(self.url))
    app = memory_app(worker_send_task_events=True, event_buffer_limit=50)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with worker_thread(app, concurrency=4) as consumer:
        started = time.perf_counter()
        results = [add.delay(i, i) for i in range(200)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(200)]
        elapsed = time.perf_counter() - started
        events = next(m for m in consumer.middleware if isinstance(m, Events))
        assert events.dispatcher is not None
        stats = events.dispatcher.statistics()
        assert stats.sent == 0 and stats.dropped >= 200 * 3 - 2 * 50  # received, started, done
        Stuck.release.set()
    assert elapsed < 10, f"200 tasks took {elapsed:.1f}s with the events stuck"
    app.close()


# --- settings -------------------------------------------------------------------------------


def test_events_are_json() -> None:
    assert memory_app(event_serializer="json").conf.event_serializer == "json"
    with pytest.raises(ConfigurationError, match="event_serializer"):
        memory_app(event_serializer="pickle")


# --- celeriac events --dump ---------------------------------------------------------------


def test_the_dump_prints_the_lines_celery_prints(celery_events: list[dict[str, Any]]) -> None:
    from celery.events.dumper import Dumper as CeleryDumper

    out = io.StringIO()
    theirs, ours = CeleryDumper(out=out), Dumper()
    lines = []
    for event in celery_events:
        theirs.on_event(copy.deepcopy(event))
        lines.append(ours.line(copy.deepcopy(event)))
    assert "".join(f"{line}\n" for line in lines) == out.getvalue()


def test_celeriac_events_prints_json_lines() -> None:
    """Without ``--dump``, one JSON object per line: here the worker's next own event."""
    url = f"memory://events-cli-{os.getpid()}"
    app = make_app(url, url)
    with worker_thread(app):
        result = CliRunner().invoke(
            main,
            ["-A", "tests.apps.events_celeriac", "-b", url, "events", "--count", "1"],
            catch_exceptions=False,
        )
    app.close()
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    event = json.loads(line)
    assert event["type"] in WORKER_TYPES and event["hostname"].startswith("test-worker@")


def test_celeriac_events_dump_shows_a_running_workers_tasks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dump.db'}"
    env = {"CELERIAC_BROKER_URL": url, "CELERIAC_RESULT_BACKEND": url, "PYTHONPATH": str(ROOT)}
    app_ref = "tests.apps.events_celeriac"
    command = [sys.executable, "-m", "celeriac", "-A", app_ref, "events", "--dump"]
    with subprocess.Popen(
        [*command, "--timeout", "60"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    ) as dump:
        assert dump.stdout is not None
        assert dump.stdout.readline().strip() == "-> evdump: starting capture..."
        log = tmp_path / "worker.log"
        with WorkerProcess(app_ref, "-P", "thread", "-E", cwd=ROOT, env=env, log=log):
            app = make_app(url, url)
            assert app.send_task("events.add", (20, 22)).get(timeout=TIMEOUT) == 42
            app.close()
            lines = []
            for line in dump.stdout:
                lines.append(line)
                if " task succeeded: " in line:
                    break
        dump.terminate()
    assert any(" started: " in line and "sw_ident=py-celeriac" in line for line in lines)
    received = next(line for line in lines if " task received: " in line)
    assert "events.add(" in received and "args=(20, 22) kwargs={}" in received
    succeeded = lines[-1]
    assert "events.add(" in succeeded and "result=42" in succeeded and "runtime=" in succeeded
