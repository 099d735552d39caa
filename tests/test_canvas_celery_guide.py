"""Celery's Canvas guide, run as written (only the import changed), on real workers.

Each test is a passage of the guide (https://docs.celeryq.dev/en/stable/userguide/canvas.html)
that celeriac got wrong: flows sent through the wrong app, ``chunks`` that could not be
called, options given as keyword arguments, ``~sig``, a chain's ``link``/``link_error``
and partial kwargs, reprs, and callbacks missing from ``result.children`` (read back by
a real Celery client too, from a worker process on Redis).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import (
    Celeriac,
    GroupResult,
    Signature,
    Task,
    chain,
    chord,
    chunks,
    group,
    signature,
    xmap,
)
from celeriac.errors import SerializationError
from celeriac.testing import WorkerProcess, worker_thread

from .services import redis_url
from .worker_processes import ROOT, client_app, wait_for, worker_env

TIMEOUT = 20


class GuideTasks:
    """The guide's tasks (``add``, ``mul``, ``xsum``), registered on ``app``."""

    def __init__(self, app: Celeriac):
        @app.task(name="tasks.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="tasks.mul")
        def mul(x: int, y: int) -> int:
            return x * y

        @app.task(name="tasks.xsum")
        def xsum(numbers: list[int]) -> int:
            return sum(numbers)

        self.add: Task[[int, int], int] = add
        self.mul: Task[[int, int], int] = mul
        self.xsum: Task[[list[int]], int] = xsum


def sqlite_app(tmp_path: Path, name: str) -> Celeriac:
    url = f"sqlite:///{tmp_path / name}.db"
    return Celeriac(name, broker=url, backend=url)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celeriac]:
    made = sqlite_app(tmp_path, "guide")
    yield made
    made.close()


@pytest.fixture
def tasks(app: Celeriac) -> GuideTasks:
    return GuideTasks(app)


# -- 1. a flow sends through its tasks' app, not the current one -------------------------


def test_flows_go_to_their_tasks_app_when_another_app_is_current(tmp_path: Path) -> None:
    """A process that made a second app (which becomes current) still sends a chain,
    group, chord or chunks of the first app's tasks to the first app's broker."""
    first = sqlite_app(tmp_path, "first")
    tasks = GuideTasks(first)
    add, xsum = tasks.add, tasks.xsum
    second = sqlite_app(tmp_path, "second")  # current from now on; no worker reads it
    try:
        flows: list[Signature[Any]] = [
            chain(add.s(2, 2), add.s(4)),
            group(add.s(i, i) for i in range(3)),
            chord((add.s(i, i) for i in range(3)), xsum.s()),
            chord([add.s(1, 1)]),  # no body yet: the header's app
            chain(group(add.s(1, 1), add.s(2, 2)), xsum.s()),
            group(chain(add.s(1, 1), add.s(1)), add.s(3, 3)),
            chunks(add.s(), [(1, 1)], 1),
            xmap(xsum.s(), [[1]]),
        ]
        with worker_thread(first, concurrency=2):
            assert chain(add.s(2, 2), add.s(4), add.s(8))().get(timeout=TIMEOUT) == 16
            assert group(add.s(i, i) for i in range(3))().get(timeout=TIMEOUT) == [0, 2, 4]
            assert chord(add.s(i, i) for i in range(10))(xsum.s()).get(timeout=TIMEOUT) == 90
            assert chord([add.s(1, 1), add.s(2, 2)], xsum.s()).delay().get(timeout=TIMEOUT) == 6
            nested = group(chain(add.s(1, 1), add.s(1)), add.s(3, 3)).delay()
            assert nested.get(timeout=TIMEOUT) == [3, 6]
            assert ~chain(group(add.s(1, 1), add.s(2, 2)), xsum.s()) == 6
            assert add.chunks([(1, 1), (2, 2)], 1)().get(timeout=TIMEOUT) == [[2], [4]]
        assert all(flow.app is first for flow in flows)
    finally:
        second.close()
        first.close()


# -- 2. chunks, called, sent and run -------------------------------------------------------


def test_chunks_called_directly_send_their_group_of_starmaps(
    app: Celeriac, tasks: GuideTasks
) -> None:
    add = tasks.add
    pairs = list(zip(range(100), range(100), strict=True))
    expected = [[2 * i for i in range(start, start + 10)] for start in range(0, 100, 10)]
    with worker_thread(app, concurrency=2):
        called = add.chunks(zip(range(100), range(100), strict=True), 10)()
        assert isinstance(called, GroupResult)
        assert called.get(timeout=TIMEOUT) == expected
        assert add.chunks(pairs, 10).delay().get(timeout=TIMEOUT) == expected
        assert add.chunks(pairs, 10).apply_async(countdown=0.1).get(timeout=TIMEOUT) == expected
        assert add.chunks(pairs, 10).group().skew(start=0, step=0.01)().get(timeout=TIMEOUT) == (
            expected
        )
        assert ~add.chunks(pairs[:4], 2) == [[0, 2], [4, 6]]
    assert chunks(add.s(), pairs[:4], 2).apply().get() == [[0, 2], [4, 6]]


def test_chunks_under_task_always_eager_run_in_the_caller(app: Celeriac, tasks: GuideTasks) -> None:
    app.conf.task_always_eager = True
    assert tasks.add.chunks([(1, 2), (3, 4), (5, 6)], 2)().get() == [[3, 7], [11]]


# -- 3. calling a signature ----------------------------------------------------------------


def test_a_task_signature_called_runs_here_and_a_flow_called_is_sent(
    app: Celeriac, tasks: GuideTasks
) -> None:
    add, xsum = tasks.add, tasks.xsum
    # No worker: a plain signature called runs in this process, as Celery's does.
    assert add.s(2, 2)() == 4
    assert add.s(2)(6) == 8
    assert add.si(2, 2)() == 4
    assert signature(add, (1, 2))() == 3  # the task itself, not only its name
    assert Signature("tasks.add", (5, 5), app=app).type is add
    assert add.s(1, 1).name == "tasks.add"
    assert xsum.map([[1, 2], [3]])() == [3, 3]
    assert add.starmap([(1, 1), (2, 2)])() == [2, 4]
    with worker_thread(app, concurrency=2):
        assert chain(add.s(4), add.s(8))(2).get(timeout=TIMEOUT) == 14
        assert group(add.s(2), add.s(4))(10).get(timeout=TIMEOUT) == [12, 14]
        assert chord([add.s(1, 1), add.s(2, 2)])(xsum.s()).get(timeout=TIMEOUT) == 6
        assert add.chunks([(1, 1)], 1)().get(timeout=TIMEOUT) == [[2]]


# -- 4. options as keyword arguments ---------------------------------------------------------


def test_signatures_take_options_as_keyword_arguments(app: Celeriac, tasks: GuideTasks) -> None:
    add = tasks.add
    sig = signature("tasks.add", args=(2, 2), countdown=10)
    assert (sig.task, sig.args, sig.options) == ("tasks.add", (2, 2), {"countdown": 10})
    assert app.signature("tasks.add", args=(2, 2), options={"countdown": 1}).options == {
        "countdown": 1
    }
    assert app.signature("tasks.add", (2, 2), None, {"countdown": 1}).options == {"countdown": 1}
    assert app.signature("tasks.add", (2, 2), countdown=1).app is app
    assert Signature("tasks.add", (2, 2), options={"countdown": 1}, expires=5).options == {
        "countdown": 1,
        "expires": 5,
    }
    assert add.signature((2, 2), countdown=10).options == {"countdown": 10}
    assert add.signature((2, 2), immutable=True).immutable
    assert add.subtask((2, 2), {}, {"priority": 3}).options == {"priority": 3}
    assert add.signature(args=(1,), kwargs={"y": 2}, options={"queue": "q"}).options == {
        "queue": "q"
    }
    with worker_thread(app, concurrency=2):
        sent = app.signature("tasks.add", args=(2, 2), countdown=0.2).delay()
        assert sent.get(timeout=TIMEOUT) == 4


def test_signature_building_calls_of_the_guide(app: Celeriac, tasks: GuideTasks) -> None:
    add = tasks.add
    partial = add.s(2)
    assert partial.clone(args=(4,), kwargs={"debug": True}).args == (4, 2)
    assert partial.replace(args=(3, 3)).args == (3, 3) and partial.args == (2,)
    assert add.s(2, 2).set(countdown=10).set(expires=30).options == {
        "countdown": 10,
        "expires": 30,
    }
    copy = signature(partial)
    copy.options["countdown"] = 1
    assert copy is not partial and partial.options == {}
    errback = add.s(0, 0)
    assert add.s(2, 2).on_error(errback).options["link_error"] == [errback]
    assert add.s(2, 2).reprcall() == "tasks.add(2, 2)"
    settable = add.s(1, 1)
    settable.args, settable.kwargs, settable.immutable = (5,), {"y": 5}, True
    assert settable(100) == 10 and settable.immutable
    restored = pickle.loads(pickle.dumps(add.s(2, 2)))
    assert restored == add.s(2, 2)
    assert len(group(add.s(1, 1), add.s(2, 2)).skew(start=1, stop=10)) == 2
    skewed = group(add.s(i, i) for i in range(4)).skew(start=1, stop=2, step=1)
    assert [t.options["countdown"] for t in skewed.tasks] == [1, 2, 2, 2]


def test_reprs_read_as_celerys(app: Celeriac, tasks: GuideTasks) -> None:
    add, xsum = tasks.add, tasks.xsum
    assert repr(add.s(2, 2) | add.s(4) | add.s(8)) == "tasks.add(2, 2) | add(4) | add(8)"
    assert repr(group(add.s(2, 2), add.s(4, 4))) == "group([tasks.add(2, 2), add(4, 4)])"
    assert repr(chord([add.s(2, 2), add.s(1, 1)], xsum.s())) == (
        "%tasks.xsum([add(2, 2), add(1, 1)])"
    )
    assert repr(chord([add.s(2, 2)], xsum.s() | add.s(1))) == "%(tasks.xsum([add(2, 2)]) | add(1))"
    assert repr(add.map([1, 2])) == "[tasks.add(x) for x in [1, 2]]"
    assert repr(add.starmap([(1, 2)])) == "[tasks.add(*x) for x in [(1, 2)]]"
    assert repr(add.si(2, 2)) == "tasks.add(2, 2)"


def test_partial_kwargs_links_and_errbacks_of_flows_as_in_celery(
    app: Celeriac, tasks: GuideTasks
) -> None:
    """``chain(...).delay(y=...)`` gives the keywords to the first task; a chain's
    ``link_error`` is on every step; a group refuses ``link=`` (use a chord) and
    ``group.link`` follows its first member, as in Celery."""
    add, mul = tasks.add, tasks.mul
    failed: list[str] = []

    @app.task(name="tasks.record_failure")
    def record_failure(task_id: str) -> None:
        failed.append(task_id)

    with worker_thread(app, concurrency=2):
        assert chain(add.s(1), add.s(2)).delay(y=5).get(timeout=TIMEOUT) == 8
        assert group(add.s(1), add.s(2)).delay(y=10).get(timeout=TIMEOUT) == [11, 12]
        assert group(add.s(1, 1), add.s(2, 2))(countdown=0.1).get(timeout=TIMEOUT) == [2, 4]

        broken = chain(add.s(1, 1), add.s("x"), add.s(1))  # the second step fails
        result = broken.apply_async(link_error=record_failure.s())
        failing = result.parent
        assert failing is not None
        with pytest.raises(TypeError):
            failing.get(timeout=TIMEOUT)
        wait_for(lambda: len(failed) == 1, TIMEOUT, "the errback of the failed step")
        assert failed == [failing.id]
        with pytest.raises(TypeError, match="use a chord"):
            group(add.s(1, 1)).apply_async(link=mul.s(2))

        members = group(add.s(1, 1), add.s(2, 2))
        members.link(mul.s(10, 10))
        assert "link" not in members.tasks[1].options
        first_link = members.tasks[0].options["link"][0]
        assert first_link["immutable"] and first_link["args"] == [10, 10]


# -- 5. ~sig -----------------------------------------------------------------------------------


def test_invert_sends_and_waits_for_every_kind_of_signature(
    app: Celeriac, tasks: GuideTasks
) -> None:
    add, mul, xsum = tasks.add, tasks.mul, tasks.xsum
    with worker_thread(app, concurrency=2):
        assert ~add.s(2, 2) == 4
        assert ~xsum.map([list(range(10)), list(range(100))]) == [45, 4950]
        assert ~add.starmap(zip(range(10), range(10), strict=True)) == [2 * i for i in range(10)]
        assert ~(add.s(4, 4) | mul.s(8)) == 64
        assert ~group(add.s(i, i) for i in range(3)) == [0, 2, 4]
        assert ~chord((add.s(i, i) for i in range(10)), xsum.s()) == 90


# -- 6. callbacks are children ----------------------------------------------------------------


def test_link_callbacks_and_the_next_chain_step_are_children(
    app: Celeriac, tasks: GuideTasks
) -> None:
    add, mul = tasks.add, tasks.mul
    with worker_thread(app, concurrency=2):
        result = add.apply_async((2, 2), link=add.s(16))
        assert result.get(timeout=TIMEOUT) == 4
        children = result.children
        assert len(children) == 1 and children[0].get(timeout=TIMEOUT) == 20

        both = add.apply_async((1, 1), link=[add.s(1), group(mul.s(10), mul.s(100))])
        assert both.get(timeout=TIMEOUT) == 2
        values = sorted(child.get(timeout=TIMEOUT) for child in both.children)
        assert values == [3, 20, 200]

        last = chain(add.s(4, 4), mul.s(8), mul.s(10))()
        assert last.get(timeout=TIMEOUT) == 640
        assert last.parent is not None and last.parent.parent is not None
        assert [c.id for c in last.parent.parent.children] == [last.parent.id]
        assert [c.id for c in last.parent.children] == [last.id]

        flow = add.apply_async((1, 1), link=chain(mul.s(2), add.s(3)))  # 2 -> 4 -> 7
        assert flow.get(timeout=TIMEOUT) == 2
        (first_step,) = flow.children  # Celery's child of a chain sent: its first task
        assert first_step.get(timeout=TIMEOUT) == 4
        wait_for(lambda: len(first_step.children) == 1, TIMEOUT, "the chain's next step")
        assert first_step.children[0].get(timeout=TIMEOUT) == 7

        linked = chain(add.s(2, 2), add.s(4)).apply_async(link=mul.s(10))
        assert linked.get(timeout=TIMEOUT) == 8
        assert [c.get(timeout=TIMEOUT) for c in linked.children] == [80]


def test_a_result_its_callbacks_cannot_carry_fails_the_task(
    app: Celeriac, tasks: GuideTasks
) -> None:
    """Callbacks go out before the result is stored; one that cannot be encoded
    fails the task (Celery's ``EncodeError`` path) rather than leaving it unsettled."""

    @app.task(name="tasks.opaque")
    def opaque() -> object:
        return object()

    with worker_thread(app, concurrency=1):
        for result in (
            opaque.apply_async(link=tasks.add.s(1)),
            (opaque.s() | tasks.add.s(1)).delay().parent,
        ):
            assert result is not None
            with pytest.raises(SerializationError, match="not JSON serializable"):
                result.get(timeout=TIMEOUT)
            assert result.children == []


@pytest.fixture
def celery_on(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """A celeriac worker process on Redis, and a Celery client reading its results."""
    celery = pytest.importorskip("celery")
    from .celery_peers import close_celery

    env = worker_env(redis_url(), redis_url(prefixed=False), tmp_path)  # Celery's key layout
    reader = celery.Celery("reader", backend=env["CELERIAC_RESULT_BACKEND"], set_as_current=False)
    yield env, reader
    close_celery(reader)


def test_a_celery_client_reads_the_callbacks_of_a_worker_process_as_children(
    tmp_path: Path, celery_on: tuple[dict[str, str], Any]
) -> None:
    env, reader = celery_on
    client = client_app(env)
    log = tmp_path / "worker.log"
    try:
        with WorkerProcess(
            "tests.apps.interop_celeriac", "-P", "thread", "-c", "2", cwd=ROOT, env=env, log=log
        ):
            add = client.signature("interop.add")
            result = add.clone((2, 2)).apply_async(link=add.clone((16,)))
            assert result.get(timeout=TIMEOUT) == 4
            children = reader.AsyncResult(result.id).children
            assert [child.id for child in children] == [c.id for c in result.children]
            assert children[0].get(timeout=TIMEOUT) == 20

            last = (add.clone((1, 1)) | add.clone((1,))).delay()
            assert last.get(timeout=TIMEOUT) == 3
            assert last.parent is not None
            assert [c.id for c in reader.AsyncResult(last.parent.id).children] == [last.id]
    finally:
        client.close()
