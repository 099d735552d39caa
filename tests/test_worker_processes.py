"""The process pool for real: forked children on the SQLite broker, SIGKILL, SIGTERM.

Each test runs ``celeriac -A tests.apps.durable worker`` as a subprocess on a
fresh database file, with a short broker lease so a dead child's tasks come
back within seconds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac, states
from celeriac.errors import TimeLimitExceeded
from celeriac.result import AsyncResult
from celeriac.testing import WorkerProcess

from .worker_processes import ROOT, client_app, runs, wait_for, worker_env

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path}/broker.db"
    values = worker_env(url, url, tmp_path)
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Celeriac]:
    app = client_app(env)
    yield app
    app.close()


def worker(env: dict[str, str], tmp_path: Path, *args: str, name: str = "worker") -> WorkerProcess:
    return WorkerProcess(
        "tests.apps.durable", *args, cwd=ROOT, env=env, log=tmp_path / f"{name}.log"
    )


def send_work(client: Celeriac, count: int, seconds: float) -> list[AsyncResult[int]]:
    return [client.send_task("tests.apps.durable.work", (i, seconds)) for i in range(count)]


def test_sigkill_of_a_child_mid_task_loses_nothing(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    results = send_work(client, 40, 0.1)
    with worker(env, tmp_path, "-c", "2") as w:
        wait_for(lambda: len(runs(env)) >= 5, 20)
        victim = w.children()[0]
        os.kill(victim, signal.SIGKILL)
        values = [r.get(timeout=60) for r in results]
        assert sorted(values) == list(range(40))
        assert victim not in w.children() and len(w.children()) == 2
    counts = runs(env)
    assert set(counts) == {r.id for r in results}, "a task was lost"
    assert sum(counts.values()) - len(counts) <= 1, "only the killed child's task may run twice"
    assert "killed by SIGKILL" in w.log()


def test_warm_shutdown_finishes_running_tasks_and_loses_nothing(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    results = send_work(client, 30, 0.2)
    w = worker(env, tmp_path, "-c", "2").start()
    wait_for(lambda: len(runs(env)) >= 4, 20)
    w.signal(signal.SIGTERM)
    assert w.stop(timeout=30) == 0
    done_before = runs(env)
    assert 4 <= len(done_before) < 30
    with worker(env, tmp_path, "-c", "2", name="second"):
        assert sorted(r.get(timeout=60) for r in results) == list(range(30))
    counts = runs(env)
    assert set(counts) == {r.id for r in results}
    assert max(counts.values()) == 1, "warm shutdown must not run any task twice"


def test_cold_shutdown_redelivers_unacknowledged_tasks(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    results = send_work(client, 4, 3.0)
    w = worker(env, tmp_path, "-c", "2").start()
    wait_for(
        lambda: (
            client.AsyncResult(results[0].id).state == states.PENDING and len(w.children()) == 2
        ),
        10,
    )
    time.sleep(0.5)  # both children are inside a 3-second task
    w.signal(signal.SIGTERM)
    time.sleep(0.2)
    w.signal(signal.SIGTERM)  # second signal: cold
    started = time.monotonic()
    w.stop(timeout=10)
    assert time.monotonic() - started < 5
    assert len(runs(env)) == 0
    with worker(env, tmp_path, "-c", "2", name="second"):
        assert sorted(r.get(timeout=60) for r in results) == [0, 1, 2, 3]


def test_hard_time_limit_kills_the_task_and_the_child_is_replaced(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with worker(env, tmp_path, "-c", "1") as w:
        first_child = w.children()
        stuck = client.send_task("tests.apps.durable.spin")
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded):
            stuck.get(timeout=20)
        assert time.monotonic() - started < 8
        assert client.send_task("tests.apps.durable.whoami").get(timeout=20) not in first_child


def test_max_tasks_per_child_replaces_children(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with worker(env, tmp_path, "-c", "1", "--max-tasks-per-child", "2"):
        pids = [client.send_task("tests.apps.durable.whoami").get(timeout=20) for _ in range(6)]
    assert len(set(pids)) == 3, pids


def test_a_message_that_keeps_killing_workers_is_dead_lettered(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    env = {**env, "CELERIAC_BROKER_MAX_DELIVERIES": "2", "CELERIAC_BROKER_LEASE_TIMEOUT": "1"}
    poison = client.send_task("tests.apps.durable.poison")
    with worker(env, tmp_path, "-c", "1") as w:
        fine = [client.send_task("tests.apps.durable.work", (i, 0.0)) for i in range(3)]
        assert sorted(r.get(timeout=30) for r in fine) == [0, 1, 2]

        async def letters() -> list[str]:
            broker = await client.abroker()
            return [d.message.headers["id"] for d in await broker.dead_letters() if d.message]

        from celeriac._sync import run_sync

        wait_for(lambda: run_sync(letters) == [poison.id], 30)
        assert w.log().count("killed by SIGKILL") == 2
        assert "dead-lettered message " + poison.id in w.log()


def test_max_memory_per_child_replaces_children(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with worker(env, tmp_path, "-c", "1", "--max-memory-per-child", "1"):
        pids = [client.send_task("tests.apps.durable.whoami").get(timeout=20) for _ in range(3)]
    assert len(set(pids)) == 3, pids
