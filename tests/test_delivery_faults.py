"""Delivery promises under load and faults, with real worker processes and servers.

Each test here was written against a bug an operator met: tasks run twice
by the thread pool with no fault at all, a late worker overwriting a
finished result, a poison task left PENDING.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from celeriac import states
from celeriac.errors import DeadLettered
from celeriac.result import AsyncResult
from celeriac.testing import WorkerProcess

from .services import redis_url
from .worker_processes import ROOT, client_app, runs, wait_for, worker_env

pytestmark = pytest.mark.slow


def _urls(kind: str, tmp_path: Path) -> tuple[str, str]:
    """(broker, result store) URLs of one set-up."""
    sqlite = f"sqlite:///{tmp_path}/celeriac.db"
    if kind == "sqlite":
        return sqlite, sqlite
    redis = redis_url()
    if kind == "redis":
        return redis, redis
    return redis, sqlite  # "redis+sqlite": Redis broker, results in a SQLite file


@pytest.fixture(params=["sqlite", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return worker_env(*_urls(request.param, tmp_path), tmp_path)


def _worker(env: dict[str, str], tmp_path: Path, *args: str, name: str) -> WorkerProcess:
    return WorkerProcess(
        "tests.apps.durable", *args, cwd=ROOT, env=env, log=tmp_path / f"{name}.log"
    )


def test_thread_pool_drain_runs_every_task_exactly_once(
    setup: dict[str, str], tmp_path: Path
) -> None:
    """2,000 short tasks through ``-P thread -c 8`` with no fault: no task runs twice."""
    client = client_app(setup)
    try:
        results: list[AsyncResult[int]] = [
            client.send_task("tests.apps.durable.work", (i, 0.002)) for i in range(2000)
        ]
        with _worker(setup, tmp_path, "-P", "thread", "-c", "8", name="threads") as w:
            assert sorted(r.get(timeout=120) for r in results) == list(range(2000))
            log = w.log()
        counts = runs(setup)
        twice = {task_id: n for task_id, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} tasks ran more than once"
        assert set(counts) == {r.id for r in results}
        assert "Traceback" not in log, log[-3000:]
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis+sqlite"])
def test_a_late_worker_cannot_overwrite_the_result_of_the_attempt_that_took_over(
    kind: str, tmp_path: Path
) -> None:
    """Worker A is paused (SIGSTOP) past its lease; B runs the task and stores SUCCESS;
    A resumes and its run raises: the stored state stays SUCCESS."""
    env = worker_env(*_urls(kind, tmp_path), tmp_path, lease_timeout=1)
    client = client_app(env)
    marker = tmp_path / "first-attempt"
    try:
        result = client.send_task("tests.apps.durable.fails_if_first", (str(marker), 3.0))
        late = _worker(env, tmp_path, "-P", "solo", name="late").start()
        wait_for(marker.exists, 20)
        assert late.proc is not None
        os.kill(late.proc.pid, signal.SIGSTOP)  # a paused VM: no heartbeats, lease lapses
        with _worker(env, tmp_path, "-P", "solo", name="taker"):
            assert result.get(timeout=30) == "ok"
        seen = client.AsyncResult(result.id)
        assert seen.state == states.SUCCESS  # and this object now keeps SUCCESS
        os.kill(late.proc.pid, signal.SIGCONT)
        wait_for(lambda: f"[{result.id}] FAILURE" in late.log(), 20)
        assert late.stop(timeout=20) == 0  # its acks and writes are flushed by now
        assert seen.state == states.SUCCESS
        fresh = client.AsyncResult(result.id)
        assert (fresh.state, fresh.result) == (states.SUCCESS, "ok")
    finally:
        client.close()


def test_a_task_that_keeps_killing_its_worker_ends_rejected(tmp_path: Path) -> None:
    """Dead-lettered after too many deliveries: a waiting caller learns it (REJECTED)."""
    url = f"sqlite:///{tmp_path}/celeriac.db"
    env = {**worker_env(url, url, tmp_path, lease_timeout=1), "CELERIAC_BROKER_MAX_DELIVERIES": "2"}
    client = client_app(env)
    try:
        poison = client.send_task("tests.apps.durable.poison")
        with _worker(env, tmp_path, "-c", "1", name="poisoned"):
            with pytest.raises(DeadLettered) as raised:
                poison.get(timeout=30)
            assert poison.state == states.REJECTED
            assert "delivered 2 times without an ack" in str(raised.value)
    finally:
        client.close()


def test_an_error_after_the_task_ran_does_not_run_it_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The next step of a chain cannot be sent (over the size limit): the step that
    ran is acknowledged, not handed back to run again."""
    from celeriac import chain
    from celeriac._sync import run_sync
    from celeriac.testing import memory_app, worker_thread

    app = memory_app(task_message_max_size=1000)
    ran: list[int] = []

    @app.task
    def big(n: int) -> str:
        ran.append(n)
        return "x" * 2000

    @app.task
    def length(text: str) -> int:
        return len(text)

    async def reserved() -> int:
        broker = await app.abroker()
        stats = await broker.stats(app.conf.task_default_queue)
        return stats.ready + stats.delayed + stats.reserved

    try:
        with worker_thread(app):
            chain(big.s(1), length.s(), app=app).delay()
            wait_for(lambda: "could not send what follows" in caplog.text, 10)
            wait_for(lambda: run_sync(reserved) == 0, 10)
        assert ran == [1]
    finally:
        app.close()


def test_a_chain_whose_next_step_cannot_be_sent_fails_its_later_steps() -> None:
    """The caller waiting on a chain hears why it stopped instead of waiting for ever."""
    from celeriac import chain
    from celeriac.errors import MessageTooLarge
    from celeriac.testing import memory_app, worker_thread

    app = memory_app(task_message_max_size=1000)

    @app.task
    def big(n: int) -> str:
        return "x" * 2000

    @app.task
    def length(text: str) -> int:
        return len(text)

    try:
        with worker_thread(app):
            result = chain(big.s(1), length.s(), length.s(), app=app).delay()
            with pytest.raises(MessageTooLarge):
                result.get(timeout=10)
            middle, first = result.parent, result.parent.parent if result.parent else None
            assert isinstance(middle, AsyncResult) and isinstance(first, AsyncResult)
            assert middle.state == states.FAILURE
            assert first.get(timeout=10) == "x" * 2000
    finally:
        app.close()


def test_warm_shutdown_hands_back_prefetched_tasks_at_once() -> None:
    """Deliveries waiting for a slot go back when the stop begins, not when the
    running task ends, so other workers can take them meanwhile."""
    import threading

    from celeriac._sync import run_sync
    from celeriac.brokers.base import QueueStats
    from celeriac.testing import memory_app, worker_thread

    app = memory_app()
    release, started = threading.Event(), threading.Event()

    @app.task
    def hold(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    async def stats() -> QueueStats:
        broker = await app.abroker()
        return await broker.stats(app.conf.task_default_queue)

    try:
        results = [hold.delay(i) for i in range(4)]
        with worker_thread(app, concurrency=1, prefetch_multiplier=4) as worker:
            started.wait(10)
            wait_for(lambda: run_sync(stats).reserved == 4, 10)
            worker.request_stop("test")
            wait_for(lambda: run_sync(stats) == QueueStats(ready=3, delayed=0, reserved=1), 5)
            release.set()
        assert [r.state for r in results].count(states.SUCCESS) == 1
    finally:
        app.close()
