"""``task_message_max_size``: refused at send, dead-lettered at the worker.

Every test runs on the in-memory broker and on the default SQLite broker (a
file in ``tmp_path``), with the results in the broker's own store.
"""

from __future__ import annotations

import logging
import re
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, Task, chain, group, states
from celeriac._sync import run_sync
from celeriac.errors import ConfigurationError, MessageTooLarge
from celeriac.sending import SendOptions
from celeriac.settings import Settings
from celeriac.testing import memory_app, worker_thread

LIMIT = 4096
MiB = 1024 * 1024

MakeApp = Callable[..., Celeriac]


@pytest.fixture(params=["memory", "sqlite"])
def make_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeApp]:
    """Apps on one shared broker: a client and a worker may differ in settings."""
    url = (
        f"sqlite:///{tmp_path / 'broker.db'}"
        if request.param == "sqlite"
        else f"memory://size-{uuid.uuid4().hex[:8]}"
    )
    apps: list[Celeriac] = []

    def make(**settings: Any) -> Celeriac:
        settings.setdefault("broker_url", url)
        settings.setdefault("result_backend", url)
        app = Celeriac("size", set_as_current=False, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def _echo(app: Celeriac) -> Task[[str], int]:
    @app.task(name="size.echo")
    def echo(text: str) -> int:
        return len(text)

    return echo


def _overhead(app: Celeriac, task: Task[Any, Any]) -> int:
    """Bytes of an ``echo("")`` body: ``echo("x" * n)`` is this plus ``n``."""
    return len(app.build_outgoing(task.name, ("",), {}, SendOptions(), task).message.body)


def _queue_counts(app: Celeriac, queue: str = "celery") -> tuple[int, int, int]:
    async def stats() -> tuple[int, int, int]:
        broker = await app.abroker()
        s = await broker.stats(queue)
        return s.ready, s.delayed, s.reserved

    return run_sync(stats)


def _dead_letter_reasons(app: Celeriac) -> dict[str, str]:
    async def letters() -> dict[str, str]:
        broker = await app.abroker()
        return {
            str(d.message.headers.get("id")): d.reason
            for d in await broker.dead_letters()
            if d.message is not None
        }

    return run_sync(letters)


def _wait_for_state(result: Any, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while result.state != state and time.monotonic() < deadline:
        time.sleep(0.02)
    assert result.state == state


# -- (1) over the limit: refused at the caller, nothing left behind ------------------


def test_delay_over_the_limit_raises_and_publishes_nothing(make_app: MakeApp) -> None:
    app = make_app(task_message_max_size=LIMIT)
    echo = _echo(app)
    size = _overhead(app, echo) + LIMIT + 1
    expected = rf"'size\.echo'.*\b{size}\b bytes.*\b{LIMIT}\b bytes.*task_message_max_size"
    with pytest.raises(MessageTooLarge, match=expected) as caught:
        echo.delay("x" * (LIMIT + 1))
    assert (caught.value.task, caught.value.size, caught.value.limit) == ("size.echo", size, LIMIT)
    with pytest.raises(MessageTooLarge):
        echo.apply_async(("x" * (LIMIT + 1),), task_id="refused-id")
    assert _queue_counts(app) == (0, 0, 0)
    refused = app.AsyncResult("refused-id")
    assert not refused.known() and refused.state == states.PENDING


def test_the_default_limit_is_10_mib(make_app: MakeApp) -> None:
    app = make_app()
    echo = _echo(app)
    with pytest.raises(MessageTooLarge, match=rf"\b{10 * MiB}\b bytes"):
        echo.delay("x" * (10 * MiB + 1))
    assert _queue_counts(app) == (0, 0, 0)


def _send_task(app: Celeriac, big: str) -> Any:
    return app.send_task("not.registered.here", (big,), task_id="refused-id")


def _send_many(app: Celeriac, big: str) -> Any:
    echo = app.tasks["size.echo"]
    return app.send_many([echo.s("small"), echo.s(big).set(task_id="refused-id")])


def _group(app: Celeriac, big: str) -> Any:
    echo = app.tasks["size.echo"]
    members = (echo.s("small"), echo.s(big).set(task_id="refused-id"))
    return group(*members, app=app).apply_async()


def _chain(app: Celeriac, big: str) -> Any:
    echo = app.tasks["size.echo"]
    return chain(echo.s(big).set(task_id="refused-id"), echo.s(), app=app).apply_async()


def _link(app: Celeriac, big: str) -> Any:
    """The callback travels in the body, so it counts."""
    echo = app.tasks["size.echo"]
    return echo.apply_async(("small",), task_id="refused-id", link=echo.si(big))


def _aapply_async(app: Celeriac, big: str) -> Any:
    echo = app.tasks["size.echo"]
    return run_sync(lambda: echo.aapply_async((big,), task_id="refused-id"))


@pytest.mark.parametrize(
    "send", [_send_task, _send_many, _group, _chain, _link, _aapply_async], ids=lambda f: f.__name__
)
def test_every_way_of_sending_is_checked(
    make_app: MakeApp, send: Callable[[Celeriac, str], Any]
) -> None:
    app = make_app(task_message_max_size=LIMIT)
    _echo(app)
    with pytest.raises(MessageTooLarge, match="task_message_max_size"):
        send(app, "x" * (LIMIT + 1))
    assert _queue_counts(app) == (0, 0, 0)
    assert not app.AsyncResult("refused-id").known()


# -- (2) at the limit: sent and run -------------------------------------------------


def test_a_message_at_the_limit_goes_through_and_runs(make_app: MakeApp) -> None:
    app = make_app(task_message_max_size=LIMIT)
    echo = _echo(app)
    n = LIMIT - _overhead(app, echo)
    with pytest.raises(MessageTooLarge):
        echo.delay("x" * (n + 1))
    result = echo.delay("x" * n)  # exactly LIMIT bytes
    assert _queue_counts(app) == (1, 0, 0)
    with worker_thread(app, concurrency=1):
        assert result.get(timeout=10) == n


# -- (3) a worker with a smaller limit dead-letters, records REJECTED, goes on -------


def test_worker_dead_letters_a_message_over_its_own_limit(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app(task_message_max_size=MiB)
    worker = make_app(task_message_max_size=LIMIT)
    echo = _echo(client)
    _echo(worker)
    size = _overhead(client, echo) + 2 * LIMIT
    big = echo.delay("x" * (2 * LIMIT))
    caplog.set_level(logging.ERROR, logger="celeriac.broker")
    with worker_thread(worker, concurrency=1):
        _wait_for_state(big, states.REJECTED)
        assert echo.delay("small").get(timeout=10) == 5  # the worker went on
    with pytest.raises(MessageTooLarge, match=rf"\b{size}\b bytes.*\b{LIMIT}\b bytes"):
        big.get(timeout=1)
    reasons = _dead_letter_reasons(client)
    assert set(reasons) == {big.id}
    assert re.search(rf"\b{size}\b bytes.*\b{LIMIT}\b bytes", reasons[big.id])
    assert any(
        f"dead-lettered message {big.id}" in r.getMessage() and str(LIMIT) in r.getMessage()
        for r in caplog.records
    )


# -- (4) the setting: default, environment, config objects, off ---------------------


def test_setting_default_environment_and_validation() -> None:
    assert Settings().task_message_max_size == 10 * MiB
    conf = Settings()
    conf.load_environment({"CELERIAC_TASK_MESSAGE_MAX_SIZE": "2048"})
    assert conf.task_message_max_size == 2048
    conf.load_environment({"CELERIAC_TASK_MESSAGE_MAX_SIZE": "null"})
    assert conf.task_message_max_size is None
    conf.load_environment({"CELERIAC_TASK_MESSAGE_MAX_SIZE": "0"})
    assert conf.task_message_max_size == 0
    with pytest.raises(ConfigurationError, match="task_message_max_size"):
        conf.update(task_message_max_size=-1)
    with pytest.raises(ConfigurationError, match="task_message_max_size"):
        conf.update(task_message_max_size="10MB")


def test_setting_from_the_environment_applies_to_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_TASK_MESSAGE_MAX_SIZE", str(LIMIT))
    app = memory_app()
    try:
        assert app.conf.task_message_max_size == LIMIT
        echo = _echo(app)
        with pytest.raises(MessageTooLarge, match=rf"\b{LIMIT}\b bytes"):
            echo.delay("x" * LIMIT)
    finally:
        app.close()


def test_setting_from_a_config_object(make_app: MakeApp) -> None:
    app = make_app()
    config = types.SimpleNamespace(CELERY_TASK_MESSAGE_MAX_SIZE=LIMIT)
    app.config_from_object(config, namespace="CELERY")
    echo = _echo(app)
    with pytest.raises(MessageTooLarge, match=rf"\b{LIMIT}\b bytes"):
        echo.delay("x" * LIMIT)
    app.conf.update(task_message_max_size=None)
    echo.delay("x" * LIMIT)
    assert _queue_counts(app) == (1, 0, 0)


@pytest.mark.parametrize("off", [None, 0])
def test_none_or_zero_turns_the_limit_off(make_app: MakeApp, off: int | None) -> None:
    app = make_app(task_message_max_size=off)
    echo = _echo(app)
    n = 10 * MiB + 1  # over the default
    with worker_thread(app, concurrency=1):
        assert echo.delay("x" * n).get(timeout=30) == n


def test_a_retry_with_arguments_over_the_limit_fails_the_task() -> None:
    from celeriac.testing import memory_app, worker_thread

    app = memory_app(task_message_max_size=1000)

    @app.task(bind=True)
    def grow(self: Task[[str], str], text: str) -> str:
        raise self.retry(args=(text * 1000,), countdown=0)

    try:
        with worker_thread(app), pytest.raises(MessageTooLarge):
            grow.delay("x").get(timeout=10)
    finally:
        app.close()
