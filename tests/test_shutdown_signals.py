"""One shutdown signal is a warm shutdown, whoever it reaches.

systemd (``KillMode=control-group``) sends SIGTERM to every process of the
worker, and Ctrl-C sends SIGINT to the terminal's whole process group, so a
process-pool child gets the signal itself as well as the supervisor's
forwarded SIGTERM. Each test runs ``celeriac -A tests.apps.shutdown worker``
in its own session on a fresh SQLite file, with a broker lease far longer than
the test needs: a delivery left leased would show at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac, states
from celeriac._sync import run_sync
from celeriac.brokers.base import QueueStats
from celeriac.testing import WorkerProcess

from .worker_processes import ROOT, client_app, run_lines, wait_for, worker_env

pytestmark = pytest.mark.slow

LEASE = 10.0
SHUTDOWN_TIMEOUT = 8.0
TASKS = 20
TASK_SECONDS = 1.5
PREFETCH = 4


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/broker.db"
    return worker_env(url, url, tmp_path, lease_timeout=LEASE, shutdown_timeout=SHUTDOWN_TIMEOUT)


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Celeriac]:
    app = client_app(env)
    yield app
    app.close()


@contextlib.contextmanager
def worker(
    env: dict[str, str], tmp_path: Path, *args: str, name: str = "worker", ready: bool = True
) -> Iterator[WorkerProcess]:
    """A started worker (ready, unless ``ready=False``: just started); whatever is left of
    its process group is SIGKILLed at the end."""
    w = WorkerProcess("tests.apps.shutdown", *args, cwd=ROOT, env=env, log=tmp_path / f"{name}.log")
    try:
        yield w.start(wait=ready)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid(w), signal.SIGKILL)
        proc(w).wait(5)


def proc(w: WorkerProcess) -> subprocess.Popen[bytes]:
    assert w.proc is not None
    return w.proc


def pgid(w: WorkerProcess) -> int:
    return proc(w).pid  # WorkerProcess starts the worker in a new session


def events(env: dict[str, str], kind: str) -> list[str]:
    """Task ids (pids for ``forked`` and ``unheld``) of the ``kind`` lines in RUN_LOG."""
    return [
        fields[2] if kind in ("forked", "unheld") else fields[1]
        for fields in run_lines(env)
        if fields[0] == kind
    ]


def queue_stats(client: Celeriac) -> QueueStats:
    async def stats() -> QueueStats:
        broker = await client.abroker()
        return await broker.stats(client.conf.task_default_queue)

    return run_sync(stats)


def send_steps(client: Celeriac, count: int, seconds: float) -> list[str]:
    return [client.send_task("tests.apps.shutdown.step", (i, seconds)).id for i in range(count)]


def send(w: WorkerProcess, target: str, signum: signal.Signals) -> None:
    """One ``signum`` to the worker's main process, or to each of its processes.

    ``group`` is what systemd and Ctrl-C do; the order in which a child gets its
    own copy and the main process's forwarded SIGTERM is then up to the
    scheduler, so ``children-first`` and ``main-first`` fix each order.
    """
    children = w.children()
    warm_children = f"warm shutdown ({signum.name})"

    def kill_children() -> None:
        for pid in children:
            os.kill(pid, signum)

    if target == "group":
        os.killpg(pgid(w), signum)
    elif target == "main":
        w.signal(signum)
    elif target == "children-first":
        kill_children()
        wait_for(lambda: w.log().count(warm_children) == len(children), 5, "children stopping")
        w.signal(signum)
    else:
        assert target == "main-first"
        w.signal(signum)
        wait_for(lambda: w.log().count(warm_children) == len(children), 5, "SIGTERM forwarded")
        kill_children()


@pytest.mark.parametrize(
    ("args", "target", "signum", "running"),
    [
        pytest.param(("-c", "2"), "group", signal.SIGTERM, 2, id="process-group-SIGTERM"),
        pytest.param(("-c", "2"), "children-first", signal.SIGTERM, 2, id="process-children-first"),
        pytest.param(("-c", "2"), "main-first", signal.SIGTERM, 2, id="process-main-first"),
        pytest.param(("-c", "2"), "main", signal.SIGTERM, 2, id="process-main-SIGTERM"),
        pytest.param(("-c", "2"), "group", signal.SIGINT, 2, id="process-group-SIGINT"),
        pytest.param(("-P", "thread", "-c", "2"), "group", signal.SIGTERM, 2, id="thread-group"),
        pytest.param(("-P", "solo"), "group", signal.SIGINT, 1, id="solo-group-SIGINT"),
    ],
)
def test_one_signal_finishes_running_tasks_and_hands_back_the_rest(
    env: dict[str, str],
    client: Celeriac,
    tmp_path: Path,
    args: tuple[str, ...],
    target: str,
    signum: signal.Signals,
    running: int,
) -> None:
    ids = send_steps(client, TASKS, TASK_SECONDS)
    held = running * PREFETCH
    flags = (*args, "--prefetch", str(PREFETCH))
    with worker(env, tmp_path, *flags) as w:
        wait_for(
            lambda: len(events(env, "start")) >= running and queue_stats(client).reserved == held,
            15,
            f"{running} task(s) running and {held} deliveries held",
        )
        busy = events(env, "start")
        assert len(busy) == running
        send(w, target, signum)
        try:
            code = proc(w).wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within the shutdown timeout:\n{w.log()}")
        left = queue_stats(client)
        log = w.log()
    assert code == 0, log
    assert sorted(events(env, "end")) == sorted(busy), "the running tasks must finish"
    assert [client.AsyncResult(i).state for i in busy] == [states.SUCCESS] * running
    assert events(env, "start") == busy, "no task may start after the signal"
    assert left == QueueStats(ready=TASKS - running, delayed=0, reserved=0), (
        "the prefetched deliveries must be visible again at once"
    )
    assert "cold shutdown" not in log, log

    with worker(env, tmp_path, *flags, name="second"):
        wait_for(
            lambda: len(events(env, "start")) >= 2 * running,
            LEASE / 2,
            "the next worker runs the handed-back tasks",
        )
    started = events(env, "start")
    assert len(started) == len(set(started)), "no task may run twice"
    assert set(started) <= set(ids)


def test_a_signal_before_a_child_has_its_handlers_waits_for_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "CHILD_START_DELAY": "2"}
    with worker(env, tmp_path, "-c", "2", ready=False) as w:  # ready comes after the hold
        wait_for(lambda: len(events(env, "forked")) == 2, 5, "both children forked")
        os.killpg(pgid(w), signal.SIGTERM)
        assert events(env, "unheld") == [], "the children left their hold before the signal"
        try:
            code = proc(w).wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within the shutdown timeout:\n{w.log()}")
        log = w.log()
    assert code == 0, log
    assert log.count("stopped: signal SIGTERM") == 2, log
    assert "cold shutdown" not in log and "crashed" not in log, log


@pytest.mark.parametrize("how", ["second-group-SIGTERM", "main-SIGQUIT"])
def test_a_second_signal_or_sigquit_is_a_cold_shutdown(
    env: dict[str, str], client: Celeriac, tmp_path: Path, how: str
) -> None:
    send_steps(client, 4, 30.0)
    with worker(env, tmp_path, "-c", "2") as w:
        wait_for(lambda: len(events(env, "start")) == 2, 15, "two tasks running")
        if how == "main-SIGQUIT":
            w.signal(signal.SIGQUIT)
        else:
            os.killpg(pgid(w), signal.SIGTERM)
            wait_for(lambda: "warm shutdown: finishing" in w.log(), 5, "the warm shutdown")
            os.killpg(pgid(w), signal.SIGTERM)
        assert proc(w).wait(5) == 0
        with pytest.raises(ProcessLookupError):  # no child is left behind
            os.killpg(pgid(w), 0)
        assert "cold shutdown" in w.log()
    assert events(env, "end") == []
