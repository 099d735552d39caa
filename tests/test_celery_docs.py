"""The examples of Celery's own documentation, with only the import changed.

First Steps, Next Steps, Calling, Tasks and Canvas, run against a real worker
subprocess (``celeriac -A tests.apps.docs_proj worker``, Celery's "proj"
layout) on the embedded SQLite broker and on Redis. Each assertion is what
Celery's documentation shows (or what Celery 5.7 returns where the guide
shows no output). The client is the project's own app, pointed at the test's
broker the way a Celery test suite configures one (``app.conf.update``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from celeriac import chain, chord, group
from celeriac.testing import WorkerProcess
from tests.apps.docs_proj.celery import app
from tests.apps.docs_proj.tasks import (
    add,
    always_fails,
    dump_context,
    error_handler,
    fails,
    mul,
    retry_once,
    tsum,
    upload_files,
    xsum,
)

from .services import redis_url
from .worker_processes import ROOT, wait_for

TIMEOUT = 30


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp(f"docs-{request.param}")
    url = f"sqlite:///{tmp}/celery.db" if request.param == "sqlite" else redis_url()
    variables = {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": url,
        "DOCS_ERRBACK_LOG": str(tmp / "errback.log"),
        "DOCS_TMP": str(tmp),
    }
    app.conf.update(broker_url=url, result_backend=url)
    # Next Steps: "celery -A proj worker -Q hipri,celery" (lopri for the Calling guide).
    worker = WorkerProcess(
        "tests.apps.docs_proj",
        "-Q",
        "celery,hipri,lopri",
        "-c",
        "2",
        "-l",
        "INFO",
        cwd=ROOT,
        env=variables,
        log=tmp / "worker.log",
    ).start()
    try:
        yield variables
    finally:
        worker.stop()
        app.close()


# -- First Steps with Celery ------------------------------------------------------
def test_first_steps_keeping_results(env: dict[str, str]) -> None:
    result = add.delay(4, 4)
    assert result.get(timeout=TIMEOUT) == 8
    assert result.ready() is True


def test_first_steps_an_error_with_propagate_false(env: dict[str, str]) -> None:
    result = fails.delay()
    exc = result.get(propagate=False, timeout=TIMEOUT)
    assert isinstance(exc, ValueError)
    assert "Something went wrong" in (result.traceback or "")
    assert result.failed() is True


# -- Next Steps -----------------------------------------------------------------------
def test_next_steps_calling_tasks(env: dict[str, str]) -> None:
    res = add.delay(2, 2)
    assert res.get(timeout=TIMEOUT) == 4
    assert isinstance(res.id, str)
    res = add.delay(2, "2")
    with pytest.raises(TypeError):
        res.get(timeout=TIMEOUT)
    assert res.state == "FAILURE"
    assert res.failed() is True
    assert res.successful() is False


def test_next_steps_apply_async_to_a_queue_with_a_countdown(env: dict[str, str]) -> None:
    sent = time.time()
    assert add.apply_async((2, 2), queue="lopri", countdown=1).get(timeout=TIMEOUT) == 4
    assert time.time() - sent >= 1


def test_next_steps_signatures_and_partials(env: dict[str, str]) -> None:
    assert add.s(2, 2).delay().get(timeout=TIMEOUT) == 4
    s1 = add.s(2, 2)
    res = s1.delay()
    assert res.get(timeout=TIMEOUT) == 4
    s2 = add.s(2)
    res = s2.delay(8)
    assert res.get(timeout=TIMEOUT) == 10


def test_next_steps_primitives(env: dict[str, str]) -> None:
    assert group(add.s(i, i) for i in range(10))().get(timeout=TIMEOUT) == list(range(0, 20, 2))
    g = group(add.s(i) for i in range(10))
    assert g(10).get(timeout=TIMEOUT) == list(range(10, 20))
    assert chain(add.s(4, 4) | mul.s(8))().get(timeout=TIMEOUT) == 64
    g2 = chain(add.s(4) | mul.s(8))
    assert g2(4).get(timeout=TIMEOUT) == 64
    assert (add.s(4, 4) | mul.s(8))().get(timeout=TIMEOUT) == 64
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=TIMEOUT) == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=TIMEOUT) == 90


def test_next_steps_routing(env: dict[str, str]) -> None:
    app.conf.update(task_routes={"tests.apps.docs_proj.tasks.add": {"queue": "hipri"}})
    try:
        assert add.delay(2, 3).get(timeout=TIMEOUT) == 5
        assert add.apply_async((2, 2), queue="hipri").get(timeout=TIMEOUT) == 4
    finally:
        app.conf.update(task_routes={})


# -- Calling Tasks --------------------------------------------------------------------
def test_calling_link_callback_is_a_child(env: dict[str, str]) -> None:
    res = add.apply_async((2, 2), link=add.s(16))
    assert res.get(timeout=TIMEOUT) == 4
    assert res.children[0].get(timeout=TIMEOUT) == 20  # stored with the result, as in Celery


def test_calling_link_error_gets_request_exc_and_traceback(env: dict[str, str]) -> None:
    res = fails.apply_async(link_error=error_handler.s())
    with pytest.raises(ValueError):
        res.get(timeout=TIMEOUT)
    log = Path(env["DOCS_ERRBACK_LOG"])
    # The errback's write_text creates the file before it writes it: wait for the words.
    wait_for(lambda: log.exists() and log.read_text() != "", TIMEOUT, "the errback ran")
    assert log.read_text() == f"Task {res.id} raised exception: ValueError('Something went wrong')"


def test_calling_eta_expires_and_options(env: dict[str, str]) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    assert add.apply_async((10, 10), eta=soon).get(timeout=TIMEOUT) == 20
    assert add.apply_async((10, 10), expires=60).get(timeout=TIMEOUT) == 20
    assert add.apply_async((2, 2), serializer="json").get(timeout=TIMEOUT) == 4
    policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
    assert add.apply_async((2, 2), retry=True, retry_policy=policy).get(timeout=TIMEOUT) == 4
    assert add.apply_async((2, 2), priority=0).get(timeout=TIMEOUT) == 4


def test_calling_expired_task_is_revoked(env: dict[str, str]) -> None:
    res = add.apply_async((1, 1), countdown=2, expires=1)
    assert res.get(propagate=False, timeout=TIMEOUT) is not None
    assert res.state == "REVOKED"


# -- Tasks ----------------------------------------------------------------------------
def test_tasks_bound_task_reads_its_request(env: dict[str, str]) -> None:
    res = dump_context.delay(2, 3)
    text = res.get(timeout=TIMEOUT)
    assert text == f"Executing task id {res.id}, args: [2, 3] kwargs: {{}}"


def test_tasks_custom_state_with_progress_meta(env: dict[str, str]) -> None:
    gate = Path(env["DOCS_TMP"]) / "gate"
    res = upload_files.delay([str(gate)])
    wait_for(lambda: res.state == "PROGRESS", TIMEOUT, "the PROGRESS state")
    assert res.info == {"current": 0, "total": 1}
    gate.touch()
    assert res.get(timeout=TIMEOUT) is None
    assert res.state == "SUCCESS"


def test_tasks_called_directly_skips_update_state(env: dict[str, str]) -> None:
    assert upload_files(["no-such-file"]) is None


def test_tasks_retry_with_countdown(env: dict[str, str]) -> None:
    marker = Path(env["DOCS_TMP"]) / f"retry-{time.monotonic_ns()}"
    assert retry_once.delay(str(marker)).get(timeout=TIMEOUT) == 1


def test_tasks_autoretry_for_gives_up_after_max_retries(env: dict[str, str]) -> None:
    res = always_fails.delay()
    with pytest.raises(Exception) as caught:  # the type is checked by name below
        res.get(timeout=TIMEOUT)
    assert type(caught.value).__name__ == "TransientError"  # Celery re-raises the task's error
    assert res.state == "FAILURE"


def test_tasks_calling_a_task_runs_it_here(env: dict[str, str]) -> None:
    assert add(2, 2) == 4


# -- Canvas ---------------------------------------------------------------------------
def test_canvas_signatures(env: dict[str, str]) -> None:
    s = add.signature((2, 2), {"debug": True}, countdown=10)
    assert s.args == (2, 2)
    assert s.kwargs == {"debug": True}
    assert s.options == {"countdown": 10}
    named = app.signature("tests.apps.docs_proj.tasks.add", args=(2, 2), countdown=1)
    assert named.delay().get(timeout=TIMEOUT) == 4
    assert add.s(2, 2)() == 4  # calling a signature runs the task here


def test_canvas_invert_applies_and_waits(env: dict[str, str]) -> None:
    assert ~add.s(2, 2) == 4
    # The guide maps over ranges, which JSON cannot carry (Celery 5.7 raises EncodeError too).
    assert ~tsum.map([list(range(10)), list(range(100))]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10), strict=True)) == list(range(0, 20, 2))


def test_canvas_chains_keep_their_parents(env: dict[str, str]) -> None:
    res = chain(add.s(2, 2), add.s(4), add.s(8))()
    assert res.get(timeout=TIMEOUT) == 16
    assert res.parent is not None and res.parent.get(timeout=TIMEOUT) == 8
    assert res.parent.parent is not None and res.parent.parent.get(timeout=TIMEOUT) == 4
    assert (add.s(2, 2) | add.s(4) | add.s(8))().get(timeout=TIMEOUT) == 16


def test_canvas_group_results(env: dict[str, str]) -> None:
    res = group(add.s(i, i) for i in range(10))()
    assert res.get(timeout=TIMEOUT) == list(range(0, 20, 2))
    assert res.ready() is True
    assert res.successful() is True
    assert res.completed_count() == 10


def test_canvas_chord(env: dict[str, str]) -> None:
    assert chord(add.s(i, i) for i in range(100))(tsum.s()).get(timeout=TIMEOUT) == 9900


def test_canvas_chunks(env: dict[str, str]) -> None:
    res = add.chunks(zip(range(100), range(100), strict=True), 10)()
    assert res.get(timeout=TIMEOUT) == [[2 * (10 * c + i) for i in range(10)] for c in range(10)]
