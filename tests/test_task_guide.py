"""Celery's Tasks guide, run against celeriac: exceptions, progress states, the
result API, custom Task classes and their handlers, requeueing, errbacks with
the failed request, and extended results.

A real worker (``worker_thread``) on a SQLite broker in ``tmp_path``; where the
guide says Celery clients read the result, the result store is Redis in
Celery's layout and a real Celery client reads it too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import celeriac.exceptions
from celeriac import Celeriac, Task, states
from celeriac.exceptions import Reject
from celeriac.execution import ExceptionInfo
from celeriac.request import Request
from celeriac.testing import WorkerProcess, worker_thread

from .celery_peers import celery_client, close_celery
from .services import redis_url
from .worker_processes import ROOT, client_app, run_lines, wait_for, worker_env

celery = pytest.importorskip("celery")

TIMEOUT = 20
REDIS_DB = 12
"""Results in Celery's layout (no key prefix), in a database of these tests' own."""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celeriac]:
    """An app on a SQLite broker and result store in ``tmp_path``."""
    url = f"sqlite:///{tmp_path}/guide.db"
    app = Celeriac("guide", broker=url, backend=url, set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def redis_app(tmp_path: Path) -> Iterator[Celeriac]:
    """A SQLite broker with results on Redis in Celery's layout, ``result_extended`` on."""
    backend = redis_url(prefixed=False, db=REDIS_DB)
    app = Celeriac(
        "guide",
        broker=f"sqlite:///{tmp_path}/guide.db",
        backend=backend,
        result_extended=True,
        set_as_current=False,
    )
    yield app
    app.close()


@pytest.fixture
def celery_reader(redis_app: Celeriac) -> Iterator[Any]:
    """A Celery 5 client reading ``redis_app``'s result store."""
    client = celery_client("memory://", str(redis_app.conf.result_backend))
    client.conf.result_extended = True
    yield client
    close_celery(client)


# -- 1, 2: celeriac.exceptions, with Celery's bases -----------------------------------


def test_exceptions_has_celerys_names_with_celerys_bases() -> None:
    import celery.exceptions as theirs

    ours = set(celeriac.exceptions.__all__)
    assert ours <= set(theirs.__all__)
    for name in (
        "Reject", "Ignore", "Retry", "MaxRetriesExceededError", "SoftTimeLimitExceeded",
        "TimeLimitExceeded", "TaskError", "NotRegistered", "ChordError", "WorkerLostError",
        "TaskRevokedError", "TimeoutError", "TaskPredicate", "CeleryError",
    ):  # fmt: skip
        assert name in ours
    for name in ("Reject", "Ignore", "Retry", "TaskPredicate"):
        assert issubclass(getattr(celeriac.exceptions, name), Exception)
        assert issubclass(getattr(celeriac.exceptions, name), celeriac.exceptions.CeleryError)


def test_except_exception_around_retry_catches_it_as_in_celery(app: Celeriac) -> None:
    """Celery's Retry is an Exception: ``except Exception`` swallows ``self.retry()``."""

    def body(task: Any) -> str:
        try:
            task.retry(countdown=0)
        except Exception as exc:
            return f"caught {type(exc).__name__}"
        return "not raised"

    peer = celery.Celery("peer", set_as_current=False)
    assert peer.task(bind=True)(body).apply().get() == "caught Retry"

    swallow = app.task(bind=True)(body)
    with worker_thread(app, concurrency=1):
        assert swallow.delay().get(timeout=TIMEOUT) == "caught Retry"


# -- 3, 4: called_directly, update_state, the result API -----------------------------


def test_progress_from_update_state_is_read_by_celeriac_and_celery(
    redis_app: Celeriac, celery_reader: Any
) -> None:
    step = threading.Event()

    @redis_app.task(bind=True)
    def crunch(self: Task[[int], int], n: int) -> int:
        for i in range(n):
            if not self.request.called_directly:
                self.update_state(state="PROGRESS", meta={"current": i, "total": n})
            if i == 1:
                step.wait(TIMEOUT)
        return n

    assert crunch(3) == 3  # called directly: no request, nothing stored
    with worker_thread(redis_app, concurrency=1):
        result = crunch.delay(3)
        wait_for(lambda: result.info == {"current": 1, "total": 3}, TIMEOUT, "progress 1/3")
        assert result.state == "PROGRESS"
        assert result.result == {"current": 1, "total": 3}
        theirs = celery_reader.AsyncResult(result.id)
        assert theirs.state == "PROGRESS"
        assert theirs.info == {"current": 1, "total": 3}
        step.set()
        assert result.get(timeout=TIMEOUT) == 3
        assert result.info == 3
        assert celery_reader.AsyncResult(result.id).get(timeout=TIMEOUT) == 3


@pytest.mark.slow
def test_progress_and_handlers_in_a_process_pool_child_on_redis(
    tmp_path: Path, celery_reader: Any
) -> None:
    """A forked child writes progress from its task thread's own loop and connections."""
    env = {
        **worker_env(redis_url(), redis_url(prefixed=False, db=REDIS_DB), tmp_path),
        "CELERIAC_RESULT_EXTENDED": "true",
    }
    client = client_app(env)
    gate = tmp_path / "gate"
    log = tmp_path / "worker.log"
    try:
        with WorkerProcess(
            "tests.apps.task_guide", "-P", "process", "-c", "1", cwd=ROOT, env=env, log=log
        ) as worker:
            result = client.send_task("guide.progress", (3, str(gate)))
            wait_for(lambda: result.state == "PROGRESS", TIMEOUT, "progress stored")
            info = result.info
            child = info["pid"]
            assert child in worker.children()
            assert info == {"current": 2, "total": 3, "pid": child}
            theirs = celery_reader.AsyncResult(result.id)
            assert (theirs.state, theirs.info, theirs.name) == ("PROGRESS", info, "guide.progress")
            gate.touch()
            assert result.get(timeout=TIMEOUT) == 3
            wait_for(lambda: len(run_lines(env)) == 2, TIMEOUT, "the handlers ran")
        assert run_lines(env) == [
            ["on_success", result.id, str(child)],
            ["after_return", result.id, str(child)],
        ]
    finally:
        client.close()


def test_then_wait_and_children(app: Celeriac) -> None:
    @app.task
    def child(x: int) -> int:
        return x

    @app.task
    def parent() -> str:
        child.delay(1)
        child.delay(2)
        return "done"

    seen: list[Any] = []
    with worker_thread(app):
        result = parent.delay()
        result.then(lambda r: seen.append(("ready", r.id, r.result)))
        assert seen == []
        assert result.wait(timeout=TIMEOUT) == "done"
        assert seen == [("ready", result.id, "done")]
        result.then(seen.append)  # already ready: at once
        assert seen[-1] is result
        assert sorted(c.get(timeout=TIMEOUT) for c in result.children) == [1, 2]

    errors: list[Exception] = []
    result.then(lambda r: 1 / 0, on_error=errors.append)
    assert isinstance(errors[0], ZeroDivisionError)


def test_a_direct_call_inside_a_task_has_a_request_of_its_own(app: Celeriac) -> None:
    @app.task
    def leaf() -> str:
        return "leaf"

    @app.task(bind=True)
    def helper(self: Task[[], list[Any]]) -> list[Any]:
        if not self.request.called_directly:
            self.update_state(state="PROGRESS", meta={"helper": True})
        leaf.delay()  # still a child of the task the worker runs
        return [self.request.called_directly, self.request.id]

    @app.task(bind=True)
    def outer(self: Task[[], list[Any]]) -> list[Any]:
        return [*helper(), self.request.called_directly, self.request.id]

    @app.task(bind=True)
    def give_up(self: Task[[], None]) -> None:
        raise self.retry(exc=LookupError("no retry in a plain call"))

    with pytest.raises(LookupError):
        give_up()  # called directly: Celery raises the reason
    with worker_thread(app):
        result = outer.delay()
        assert result.get(timeout=TIMEOUT) == [True, None, False, result.id]
        assert [child.get(timeout=TIMEOUT) for child in result.children] == ["leaf"]


# -- 5: base= Task classes: option defaults and handlers -------------------------------


class Recorded(Task[Any, Any]):
    """Records every handler call, with Celery's arguments."""

    calls: list[tuple[Any, ...]]  # set per test

    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        self.calls.append(("before_start", task_id, args, kwargs))

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        self.calls.append(("on_success", retval, task_id, args, kwargs))

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        self.calls.append(("on_failure", exc, task_id, args, kwargs, einfo))

    def on_retry(
        self,
        exc: BaseException | None,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        self.calls.append(("on_retry", exc, task_id, args, kwargs, self.request.retries))

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:
        self.calls.append(("after_return", status, retval, task_id, args, kwargs, einfo))


def test_handlers_are_called_in_celerys_order_with_celerys_arguments(app: Celeriac) -> None:
    calls: list[tuple[Any, ...]] = []

    class Tracked(Recorded):
        pass

    Tracked.calls = calls

    @app.task(base=Tracked)
    def divide(x: int, y: int = 1) -> float:
        return x / y

    @app.task(base=Tracked, bind=True, default_retry_delay=0)
    def flaky(self: Task[[], str]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("once"))
        return "ok"

    assert isinstance(divide, Tracked) and divide(4, y=2) == 2  # direct call: no handlers
    assert calls == []
    with worker_thread(app, concurrency=1):
        ok = divide.delay(4, y=2)
        assert ok.get(timeout=TIMEOUT) == 2
        wait_for(lambda: len(calls) == 3, TIMEOUT, "the success handlers")
        assert calls == [
            ("before_start", ok.id, [4], {"y": 2}),
            ("on_success", 2, ok.id, [4], {"y": 2}),
            ("after_return", states.SUCCESS, 2, ok.id, [4], {"y": 2}, None),
        ]
        calls.clear()

        bad = divide.delay(1, y=0)
        with pytest.raises(ZeroDivisionError):
            bad.get(timeout=TIMEOUT)
        wait_for(lambda: len(calls) == 3, TIMEOUT, "the failure handlers")
        assert [c[0] for c in calls] == ["before_start", "on_failure", "after_return"]
        _, exc, task_id, args, kwargs, einfo = calls[1]
        assert isinstance(exc, ZeroDivisionError)
        assert (task_id, args, kwargs) == (bad.id, [1], {"y": 0})
        assert einfo.exception is exc and einfo.type is ZeroDivisionError
        assert "ZeroDivisionError" in einfo.traceback and "return x / y" in str(einfo)
        assert calls[2] == ("after_return", states.FAILURE, exc, bad.id, [1], {"y": 0}, None)
        calls.clear()

        retried = flaky.delay()
        assert retried.get(timeout=TIMEOUT) == "ok"
        wait_for(lambda: len(calls) == 5, TIMEOUT, "the retry, then the success")
        assert [c[0] for c in calls] == [
            "before_start", "on_retry", "before_start", "on_success", "after_return",
        ]  # fmt: skip
        assert isinstance(calls[1][1], KeyError) and calls[1][2] == retried.id
        assert calls[1][5] == 0  # self.request is the retried attempt's


def test_handlers_run_in_eager_mode_and_a_custom_call_runs_in_the_worker(
    app: Celeriac,
) -> None:
    """Celery's Application guide: a base class's ``__call__`` wraps every run."""
    calls: list[tuple[Any, ...]] = []

    class Logged(Recorded):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(("__call__", self.request.id, self.request.called_directly))
            return super().__call__(*args, **kwargs)

    Logged.calls = calls

    @app.task(base=Logged, bind=True)
    def double(self: Task[[int], int], x: int) -> int:
        calls.append(("run", self.request.id))
        return 2 * x

    eager = double.apply((2,))
    assert eager.get() == 4
    assert [c[0] for c in calls] == [
        "before_start", "__call__", "run", "on_success", "after_return",
    ]  # fmt: skip
    calls.clear()
    with worker_thread(app, concurrency=1):
        result = double.delay(5)
        assert result.get(timeout=TIMEOUT) == 10
        wait_for(lambda: len(calls) == 5, TIMEOUT, "the handlers")
    assert calls[1:3] == [("__call__", result.id, False), ("run", result.id)]


def test_a_raising_handler_is_logged_and_the_outcome_stands(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    class Noisy(Task[Any, Any]):
        def on_success(
            self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
        ) -> None:
            raise RuntimeError("handler broke")

    @app.task(base=Noisy)
    def answer() -> int:
        return 42

    with caplog.at_level(logging.ERROR, "celeriac.worker"), worker_thread(app, concurrency=1):
        result = answer.delay()
        assert result.get(timeout=TIMEOUT) == 42
        wait_for(lambda: "handler broke" in caplog.text, TIMEOUT, "the handler's error logged")
        assert result.state == states.SUCCESS
        assert "on_success handler raised" in caplog.text


def test_a_base_class_sets_option_defaults(app: Celeriac) -> None:
    class Patient(Task[Any, Any]):
        autoretry_for = (ConnectionError,)
        max_retries = 5
        default_retry_delay = 0
        retry_backoff = False
        rate_limit = "100/s"
        acks_late = True
        ignore_result = False
        serializer = "json"
        time_limit = 30.0

    attempts: list[int] = []

    @app.task(base=Patient, bind=True)
    def fetch(self: Task[[], int]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise ConnectionError("flaky network")
        return self.request.retries

    @app.task(base=Patient, max_retries=1)
    def overridden() -> None: ...

    assert (fetch.max_retries, fetch.autoretry_for, fetch.rate_limit) == (
        5, (ConnectionError,), "100/s",
    )  # fmt: skip
    assert (fetch.time_limit, fetch.serializer, fetch.default_retry_delay) == (30.0, "json", 0)
    assert overridden.max_retries == 1  # the decorator's option wins
    with worker_thread(app, concurrency=1):
        assert fetch.delay().get(timeout=TIMEOUT) == 2
    assert attempts == [0, 1, 2]


# -- 6: Reject(requeue=True) ---------------------------------------------------------


def test_a_requeued_task_stores_nothing_and_its_caller_gets_the_rerun(app: Celeriac) -> None:
    @app.task(bind=True)
    def picky(self: Task[[], int]) -> int:
        if self.request.delivery_count == 1:
            raise Reject("not yet", requeue=True)
        return self.request.delivery_count

    with worker_thread(app, concurrency=1):
        assert picky.delay().get(timeout=TIMEOUT) == 2


# -- 7: errbacks with (request, exc, traceback) -------------------------------------------


def test_an_errback_with_three_parameters_gets_the_request_exception_and_traceback(
    app: Celeriac,
) -> None:
    got: list[tuple[Any, ...]] = []
    ids: list[str] = []

    @app.task
    def error_handler(request: Request, exc: BaseException, traceback: str) -> None:
        got.append((request, exc, traceback))

    @app.task
    def old_style(task_id: str) -> None:
        ids.append(task_id)

    @app.task
    def broken(x: int) -> None:
        raise ValueError(f"bad {x}")

    with worker_thread(app, concurrency=1):
        failed = broken.apply_async((7,), link_error=[error_handler.s(), old_style.s()])
        with pytest.raises(ValueError):
            failed.get(timeout=TIMEOUT)
        wait_for(lambda: got and ids, TIMEOUT, "both errbacks")
    request, exc, traceback = got[0]
    assert (request.id, request.args) == (failed.id, [7])
    assert isinstance(exc, ValueError) and str(exc) == "bad 7"
    assert "ValueError: bad 7" in traceback
    assert ids == [failed.id]


# -- 8: result_extended -------------------------------------------------------------------


def test_extended_results_are_read_by_celeriac_and_celery(
    redis_app: Celeriac, celery_reader: Any
) -> None:
    @redis_app.task(name="guide.scale")
    def scale(x: int, factor: int = 1) -> int:
        return x * factor

    with worker_thread(redis_app, concurrency=1):
        result = scale.delay(3, factor=5)
        assert result.get(timeout=TIMEOUT) == 15
    mine = redis_app.AsyncResult(result.id)
    theirs = celery_reader.AsyncResult(result.id)
    for read in (mine, theirs):
        assert (read.name, read.args, read.kwargs) == ("guide.scale", [3], {"factor": 5})
        assert (read.queue, read.retries) == ("celery", 0)
        assert read.worker is not None and read.worker.startswith("test-worker@")
