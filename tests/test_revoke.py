"""Durable revokes and terminate, with real worker processes on SQLite and Redis.

Each test runs ``celeriac -A tests.apps.revocable worker`` as a subprocess and
revokes through ``app.control`` (the mailbox), as a user does. The app's tasks
write ``start``/``end``/``stopped`` lines to a run log, so a test sees whether
a task began and how it ended.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac._sync import run_sync
from celeriac.brokers.base import QueueStats
from celeriac.errors import TaskRevokedError
from celeriac.execution import Outcome
from celeriac.result import AsyncResult
from celeriac.testing import memory_app, worker_thread
from celeriac.worker.context import WorkerContext
from celeriac.worker.job import Job
from celeriac.worker.middleware import Middleware
from celeriac.worker.revokes import Revokes, signal_number, stamp_key, terminated_by

from .services import rabbitmq_url, redis_url
from .worker_processes import client_app, revocable_worker, run_lines, wait_for, worker_env

NAP = "tests.apps.revocable.nap"
ANAP = "tests.apps.revocable.anap"
EARLY = "tests.apps.revocable.early"
DISCARDED = re.compile(r"INFO/(\d+)\] celeriac\.worker: Discarding revoked task: \S+\[([\w-]+)\]")


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A worker's environment: SQLite, or Redis, or RabbitMQ with results in Redis
    (unprefixed: Celery's key layout exactly, for a Celery client to read)."""
    if request.param == "sqlite":
        broker = backend = f"sqlite:///{tmp_path}/broker.db"
    elif request.param == "redis":
        broker, backend = redis_url(), redis_url(prefixed=False)
    else:
        broker, backend = rabbitmq_url(), redis_url(prefixed=False)
    return worker_env(broker, backend, tmp_path)


EVERY_BROKER = pytest.mark.parametrize("env", ["sqlite", "redis", "amqp"], indirect=True)


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Celeriac]:
    app = client_app(env)
    yield app
    app.close()


def events(env: dict[str, str], task_id: str) -> list[tuple[str, int]]:
    """``(event, pid)`` of each run-log line of ``task_id``, in order."""
    return [(event, int(pid)) for event, tid, pid in run_lines(env) if tid == task_id]


def queue_stats(app: Celeriac) -> QueueStats:
    async def stats() -> QueueStats:
        return await (await app.abroker()).stats("celery")

    return run_sync(stats)


def settled(app: Celeriac) -> bool:
    """Nothing waits or is leased in the queue: every message was acknowledged."""
    return queue_stats(app) == QueueStats(0, 0, 0)


def wait_revoked(result: AsyncResult[Any], timeout: float = 10) -> None:
    wait_for(lambda: result.state == states.REVOKED, timeout, f"{result.id} REVOKED")


def assert_revoked(result: AsyncResult[Any]) -> None:
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)


@pytest.mark.slow
@EVERY_BROKER
def test_a_revoke_stored_before_the_worker_starts_is_honoured(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    revoked, acked_early = client.send_task(NAP, (0,)), client.send_task(EARLY)
    client.control.revoke([revoked.id, acked_early.id])  # no worker listens: kept in the broker
    later = client.send_task(NAP, (0,))
    with revocable_worker(env, tmp_path, "-c", "2"):
        assert later.get(timeout=20) == "rested"
        for result in (revoked, acked_early):
            wait_revoked(result)
        wait_for(lambda: settled(client), 10, "the revoked tasks' messages acknowledged")
    assert events(env, revoked.id) == [], "a revoked task ran"
    assert_revoked(revoked)
    backend = env["CELERIAC_RESULT_BACKEND"]
    if backend.startswith("redis://"):  # Celery reads the same result: mark_as_revoked's shape
        from .celery_peers import celery_client, close_celery

        celery = celery_client("memory://", backend)
        try:
            seen = celery.AsyncResult(revoked.id)
            assert seen.state == "REVOKED"
            assert type(seen.result).__name__ == "TaskRevokedError"
        finally:
            close_celery(celery)


@pytest.mark.slow
def test_a_revoke_reaches_every_child_of_a_running_worker(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with revocable_worker(env, tmp_path, "-c", "2") as w:
        # One child busy for 1.5 s, the other for 3 s; then the queue holds
        # [first, middle, second]: the first child to be free takes `first`, then
        # `middle` (2.5 s), so `second` can only go to the other child.
        short, long = client.send_task(NAP, (1.5,)), client.send_task(NAP, (3.0,))
        wait_for(lambda: events(env, short.id) and events(env, long.id), 20, "both busy")
        first, middle, second = (client.send_task(NAP, (s,)) for s in (0, 2.5, 0))
        waiting = client.send_task(NAP, (0,), countdown=600)  # in the broker for 10 minutes
        revoked = [first.id, second.id, waiting.id]
        replies = client.control.revoke(revoked, reply=True, timeout=5, limit=1)
        assert replies and len(replies) == 1
        wait_revoked(waiting, 1.0)  # marked at once, as Celery 5.7 does
        assert middle.get(timeout=20) == "rested"
        for result in (first, second):
            wait_revoked(result)
        children = set(w.children())
    assert events(env, first.id) == events(env, second.id) == []
    discarded = {tid: int(pid) for pid, tid in DISCARDED.findall(w.log())}
    assert discarded[first.id] != discarded[second.id], "each child must skip one"
    assert {discarded[first.id], discarded[second.id]} == children
    assert_revoked(first)


@pytest.mark.slow
def test_a_prefetched_task_revoked_while_it_waits_for_a_slot_is_not_run(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    """With a prefetch of 4, a task fetched behind a long one waits in the worker for
    the slot; a revoke arriving meanwhile must still stop it."""
    with revocable_worker(env, tmp_path, "-P", "solo", "--prefetch", "4"):
        busy = client.send_task(NAP, (2.0,))
        wait_for(lambda: events(env, busy.id), 20, "the slot busy")
        held = client.send_task(NAP, (0,))
        wait_for(
            lambda: any(
                held.id in {r["id"] for r in rs}
                for rs in (client.control.inspect(timeout=0.5).reserved() or {}).values()
            ),
            10,
            "the task prefetched, waiting for the slot",
        )
        client.control.revoke(held.id)
        assert busy.get(timeout=20) == "rested"
        wait_revoked(held)
    assert events(env, held.id) == [], "a revoked task ran"


def terminated_within_a_second(client: Celeriac, result: AsyncResult[Any]) -> float:
    """Revoke ``result``'s running task with terminate=True; its state is REVOKED
    within a second. Returns when the revoke was sent (monotonic)."""
    began = time.monotonic()
    client.control.revoke(result.id, terminate=True)
    wait_revoked(result, 1.0)
    return began


@pytest.mark.slow
@EVERY_BROKER
def test_terminate_ends_a_sync_task_and_its_process_pool_child(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with revocable_worker(env, tmp_path, "-c", "2") as w:
        result = client.send_task(NAP, (60,))
        wait_for(lambda: events(env, result.id), 20, "the task started")
        victim = events(env, result.id)[0][1]
        began = terminated_within_a_second(client, result)
        wait_for(lambda: victim not in w.children(), 2.0, "the child ended")
        assert time.monotonic() - began < 2.0
        wait_for(lambda: len(w.children()) == 2, 10, "a fresh child replaced it")
        wait_for(lambda: settled(client), 5, "the message acknowledged, not handed back")
        assert client.send_task(NAP, (0,)).get(timeout=20) == "rested"
    assert "killed by SIGTERM" in w.log()
    assert [e for e, _ in events(env, result.id)] in (["start"], ["start", "stopped"])
    assert_revoked(result)


@pytest.mark.slow
@pytest.mark.parametrize(("pool", "task"), [("thread", NAP), ("async", ANAP)])
def test_terminate_stops_a_task_in_a_one_process_pool(
    env: dict[str, str], client: Celeriac, tmp_path: Path, pool: str, task: str
) -> None:
    with revocable_worker(env, tmp_path, "-P", pool, "-c", "2") as w:
        assert w.proc is not None
        pid = w.proc.pid
        result = client.send_task(task, (60,))
        wait_for(lambda: events(env, result.id), 20, "the task started")
        terminated_within_a_second(client, result)
        wait_for(lambda: ("stopped", pid) in events(env, result.id), 1.0, "it stopped")
        wait_for(lambda: settled(client), 5, "the message acknowledged, not handed back")
        assert client.send_task(task, (0,)).get(timeout=20) == "rested"
        assert w.proc.poll() is None, "the worker goes on"
    assert [e for e, _ in events(env, result.id)] == ["start", "stopped"]
    assert_revoked(result)


def stamped(client: Celeriac, task: str, seconds: float, value: Any) -> AsyncResult[Any]:
    """``task`` sent stamped ``mtask_id=value`` (Celery's stamping headers)."""
    headers = {"stamped_headers": ["mtask_id"], "stamps": {"mtask_id": value}}
    return client.send_task(task, (seconds,), headers=headers)


@pytest.mark.slow
def test_revoke_by_stamped_headers(env: dict[str, str], client: Celeriac, tmp_path: Path) -> None:
    with revocable_worker(env, tmp_path, "-P", "thread", "-c", "2"):
        wait_for(lambda: client.control.ping(timeout=0.5, limit=1), 20, "the mailbox listens")
        headers = {"mtask_id": "m1"}
        assert client.control.revoke_by_stamped_headers(headers, reply=True, timeout=5, limit=1)
        one, in_a_list = stamped(client, NAP, 0, "m1"), stamped(client, NAP, 0, ["m0", "m1"])
        other = stamped(client, NAP, 0, "m2")
        assert other.get(timeout=20) == "rested"
        running = stamped(client, NAP, 60, "m3")
        wait_for(lambda: events(env, running.id), 20, "the task started")
        client.control.revoke_by_stamped_headers({"mtask_id": ["m3"]}, terminate=True)
        wait_revoked(running, 1.0)  # terminated within a second
        for result in (one, in_a_list):
            wait_revoked(result)
    assert events(env, one.id) == events(env, in_a_list.id) == []
    assert_revoked(one)


class NothingRuns:
    """The running tasks of a process that runs none."""

    def running(self) -> list[Any]:
        return []

    def terminate(self, task_id: str, signum: int) -> bool:
        return False


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_process_that_missed_the_broadcast_reads_the_store_again(
    kind: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/broker.db" if kind == "sqlite" else redis_url()
    app = Celeriac("revokes", broker=url, backend=url, set_as_current=False)

    async def scenario() -> None:
        broker = await app.abroker()
        revokes = Revokes(broker.operations, NothingRuns(), refresh=0.05)
        await revokes.start()
        try:
            now = time.time()
            await broker.operations().store_revoked(
                {"late": now + 60, "gone": now - 1, stamp_key("mtask_id", "m1"): now + 60}
            )
            for _ in range(250):  # up to 5 s
                if "late" in revokes:
                    break
                await asyncio.sleep(0.02)
            assert revokes.ids() == ["late"], "expired ones and stamps are not task ids"
            assert "gone" not in revokes
        finally:
            await revokes.close()

    try:
        run_sync(scenario)
    finally:
        app.close()


def test_signal_names_are_celerys() -> None:
    assert signal_number("SIGKILL") == signal_number("KILL") == signal_number("9") == 9
    assert signal_number(signal.SIGTERM) == signal.SIGTERM
    with pytest.raises(ValueError, match="unknown signal"):
        signal_number("SIGNOPE")


def test_a_terminated_task_carries_the_signal_for_events_and_signals() -> None:
    app = memory_app()
    seen: list[tuple[str, int | None]] = []

    class Seen(Middleware):
        async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
            seen.append((outcome.state, terminated_by(job)))
            return outcome

    @app.task
    async def sleepy() -> None:
        await asyncio.sleep(30)

    app.conf.worker_middleware = [Seen()]
    with worker_thread(app) as consumer:
        result = sleepy.delay()
        wait_for(lambda: [j.id for j in consumer.running()] == [result.id], 5, "it runs")
        app.control.revoke(result.id, terminate=True, signal="SIGKILL")
        wait_revoked(result, 1.0)
    assert seen == [(states.REVOKED, signal.SIGKILL)]
    app.close()
