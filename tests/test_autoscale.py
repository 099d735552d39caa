"""The process pool's size: autoscale by load, pool_grow and pool_shrink.

The decision (``celeriac.worker.autoscale``) is checked on a real ``Node``;
the pool itself with ``celeriac -A tests.apps.revocable worker`` subprocesses,
counting their children as ``ps`` would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.errors import ConfigurationError
from celeriac.testing import WorkerProcess
from celeriac.worker.autoscale import Autoscaler, SlotLoad, parse_autoscale
from celeriac.worker.config import choose_config
from celeriac.worker.node import Node

from .services import redis_url
from .worker_processes import client_app, revocable_worker, wait_for, worker_env

NAP = "tests.apps.revocable.nap"


def test_parse_autoscale_takes_celerys_spelling() -> None:
    assert parse_autoscale("10,3") == (10, 3)
    assert parse_autoscale("4") == (4, 1)
    assert parse_autoscale([5, 2]) == (5, 2)
    assert parse_autoscale("3,0") == (3, 1), "the voice always runs"
    assert parse_autoscale(None) is None
    with pytest.raises(ConfigurationError, match="MAX,MIN"):
        parse_autoscale("many")


def test_autoscale_is_for_the_process_pool(tmp_path: Path) -> None:
    app = Celeriac("x", broker=f"sqlite:///{tmp_path}/b.db", worker_autoscale="4,2")
    config = choose_config(app)
    assert (config.autoscale, config.processes) == ((4, 2), 2), "starts with min, as Celery"
    with pytest.raises(ConfigurationError, match="process pool"):
        choose_config(app, pool="thread")


def busy(node: Node, *slots: int) -> None:
    for slot in slots:
        node.task_started(slot)


def test_the_autoscaler_grows_at_once_and_shrinks_idle_children_after_keepalive() -> None:
    node = Node("n", 8, wanted=1, autoscale=(3, 1))
    scaler = Autoscaler(keepalive=2.0)
    busy(node, 0)
    node.backlog = 5
    assert scaler.wanted(node, [SlotLoad(0, 0.0)], now=100.0) == 3, "capped at max"
    node.wanted = 3
    node.backlog = 0
    children = [SlotLoad(0, 0.0), SlotLoad(1, 5.0), SlotLoad(2, 5.0)]
    assert scaler.wanted(node, children, now=101.0) == 3, "not within keepalive of growing"
    assert scaler.wanted(node, children, now=102.5) == 1, "two children idle past keepalive"
    node.task_done(0)
    busy(node, 1, 2)
    idle_voice = [SlotLoad(0, 9.0), SlotLoad(1, 0.0), SlotLoad(2, 0.0)]
    assert scaler.wanted(node, idle_voice, now=110.0) == 3, "the voice never goes"


def test_autoscale_bounds_are_clamped_and_off_means_refused() -> None:
    node = Node("n", 4, wanted=1, autoscale=(3, 1))
    assert node.set_autoscale(10, None) == (4, 1), "at most the node's capacity"
    assert node.set_autoscale(None, 9) == (4, 4)
    assert node.autoscale_bounds == (4, 4)
    with pytest.raises(ValueError, match="not enabled"):
        Node("m", 4, wanted=2).set_autoscale(3, 1)


@pytest.fixture(params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        broker = backend = f"sqlite:///{tmp_path}/broker.db"
    else:
        broker = backend = redis_url()
    return {**worker_env(broker, backend, tmp_path), "CELERIAC_WORKER_AUTOSCALE_KEEPALIVE": "2"}


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[Celeriac]:
    app = client_app(env)
    yield app
    app.close()


def children_become(w: WorkerProcess, count: int, timeout: float) -> None:
    wait_for(lambda: len(w.children()) == count, timeout, f"{count} children")


@pytest.mark.slow
def test_autoscale_grows_under_load_and_shrinks_after_keepalive(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with revocable_worker(env, tmp_path, "--autoscale=3,1") as w:
        children_become(w, 1, 10)
        results = [client.send_task(NAP, (1.0,)) for _ in range(8)]
        children_become(w, 3, 10)
        assert [r.get(timeout=30) for r in results] == ["rested"] * 8
        children_become(w, 1, 10)  # idle for the 2 s keepalive
        replies = client.control.autoscale(4, 2, reply=True, timeout=5, limit=1)
        assert replies and list(replies[0].values()) == [{"ok": "autoscale now max=4 min=2"}]
        children_become(w, 2, 10)
    assert re.search(r"pool: [12] -> 3 process\(es\)", w.log()), "grew to 3 (at once or in steps)"
    assert "stopped: the pool shrank" in w.log()


@pytest.mark.slow
def test_pool_grow_and_shrink_change_the_child_count(
    env: dict[str, str], client: Celeriac, tmp_path: Path
) -> None:
    with revocable_worker(env, tmp_path, "-c", "1") as w:
        children_become(w, 1, 10)
        wait_for(lambda: client.control.ping(timeout=0.5, limit=1), 20, "the mailbox listens")
        client.control.pool_grow(2, reply=True, timeout=5, limit=1)
        children_become(w, 3, 10)
        voice = min(w.children())
        client.control.pool_shrink(1, reply=True, timeout=5, limit=1)
        children_become(w, 2, 10)
        assert voice in w.children(), "the voice stays"
        assert client.send_task(NAP, (0,)).get(timeout=20) == "rested"
