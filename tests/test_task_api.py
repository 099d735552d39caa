"""Defining and calling tasks: names, options, argument checks, eager mode."""

from __future__ import annotations

import pytest

from celeriac import Celeriac, EagerResult, Task, shared_task, states
from celeriac._sync import run_sync
from celeriac.errors import MaxRetriesExceededError, NotRegistered
from celeriac.protocol import Message
from celeriac.testing import memory_app


def test_names_default_to_module_and_function(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_names_default_to_module_and_function.<locals>.add"
    assert app.get_task(add.name) is add
    assert add(2, 3) == 5

    @app.task(name="custom.name")
    def other() -> None: ...

    assert "custom.name" in app.tasks
    with pytest.raises(NotRegistered, match="nope"):
        app.get_task("nope")


def test_wrong_arguments_fail_at_the_call_site(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="add"):
        add.delay(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        add.apply_async((1, 2, 3))


def test_unknown_apply_async_option_names_the_nearest(app: Celeriac) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(TypeError, match="'countdown'"):
        noop.apply_async(countdwn=3)


def test_apply_runs_eagerly_with_request(app: Celeriac) -> None:
    @app.task(bind=True)
    def who(self: Task[[int], list[object]], x: int) -> list[object]:
        return [self.request.id, x, self.request.is_eager]

    result = who.apply((7,), task_id="abc")
    assert result.get() == ["abc", 7, True]
    assert result.state == states.SUCCESS


def test_eager_retries_then_succeeds(app: Celeriac) -> None:
    calls: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Task[[], int]) -> int:
        calls.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=60)
        return self.request.retries

    assert flaky.apply().get() == 2
    assert calls == [0, 1, 2]


def test_eager_retry_past_max_raises(app: Celeriac) -> None:
    @app.task(bind=True, max_retries=1)
    def always(self: Task[[], None]) -> None:
        raise self.retry()

    with pytest.raises(MaxRetriesExceededError):
        always.apply()


def test_eager_autoretry_for(app: Celeriac) -> None:
    seen: list[int] = []

    @app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=2)
    def fetch(self: Task[[], str]) -> str:
        seen.append(self.request.retries)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        fetch.apply()
    assert seen == [0, 1, 2]


def test_eager_failure_without_propagation(app: Celeriac) -> None:
    app.conf.task_eager_propagates = False

    @app.task
    def boom() -> None:
        raise ValueError("bad")

    result = boom.apply()
    assert result.failed()
    with pytest.raises(ValueError, match="bad"):
        result.get()
    assert isinstance(result.result, ValueError)


def test_task_always_eager(app: Celeriac) -> None:
    app.conf.task_always_eager = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(1, 2).get() == 3


def _queued(app: Celeriac) -> int:
    async def ready() -> int:
        broker = await app.abroker()
        return (await broker.stats(app.conf.task_default_queue)).ready

    return run_sync(ready)


def test_task_always_eager_on_signatures_too(app: Celeriac) -> None:
    """``add.s(1, 2).delay()`` runs here as ``add.delay(1, 2)`` does: nothing is published."""
    app.conf.task_always_eager = True

    @app.task(bind=True)
    def add(self: Task[[int, int], list[object]], x: int, y: int) -> list[object]:
        return [x + y, self.request.is_eager]

    for result in (
        add.s(1, 2).delay(),
        add.s(1).apply_async((2,), countdown=60),
        add.signature((1, 2)).apply_async(),
        app.signature(add.name, (1, 2)).delay(),
        run_sync(lambda: add.s(1, 2).adelay()),
    ):
        assert isinstance(result, EagerResult)
        assert result.get() == [3, True]
    assert _queued(app) == 0
    with pytest.raises(TypeError, match="add"):
        add.s(1).delay()  # the task's argument check applies to its signatures too


def test_task_always_eager_runs_chains_groups_and_chords_here(app: Celeriac) -> None:
    """As in Celery, flows under eager mode run at once in the caller: nothing is queued."""
    from celeriac import chain, chord, group

    app.conf.task_always_eager = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    assert chain(add.s(1, 2), add.s(10), add.s(100), app=app).delay().get() == 113
    assert (add.s(1, 1) | add.s(1)).apply_async().get() == 3
    assert group([add.s(i, i) for i in range(4)], app=app).delay().get() == [0, 2, 4, 6]
    assert chord([add.s(i, 1) for i in range(3)], total.s(), app=app).delay().get() == 6
    assert run_sync(lambda: chain(add.s(2, 2), add.s(2), app=app).adelay()).get() == 6
    assert _queued(app) == 0


def test_a_signature_sends_with_its_tasks_options(app: Celeriac) -> None:
    @app.task(queue="reports", priority=7, serializer="msgpack", time_limit=9, expires=60)
    def report(x: int) -> int:
        return x

    app.conf.accept_content = ["json", "msgpack"]
    sent = [report.delay(1), report.s(1).delay(), app.send_task(report.name, (1,))]
    messages: list[Message] = []

    async def take() -> None:
        consumer = (await app.abroker()).consumer(["reports"], "test")
        while len(messages) < len(sent):
            messages.extend(d.message for d in await consumer.fetch(len(sent), 1.0))
        await consumer.close()

    run_sync(take)
    assert {m.headers["id"] for m in messages} == {r.id for r in sent}
    for message in messages:
        assert message.priority == 7
        assert message.content_type == "application/x-msgpack"
        assert message.headers["timelimit"] == [9, None]
        assert message.headers["expires"] is not None


def test_retry_settings_are_the_defaults_a_tasks_own_option_wins() -> None:
    app = memory_app(task_max_retries=5, task_default_retry_delay=7.5)

    @app.task
    def plain() -> None: ...

    @app.task(max_retries=1, default_retry_delay=2)
    def own() -> None: ...

    @app.task(max_retries=None)
    def forever() -> None: ...

    assert (plain.max_retries, plain.default_retry_delay) == (5, 7.5)
    assert (own.max_retries, own.default_retry_delay) == (1, 2)
    assert forever.max_retries is None
    app.close()
    celery_defaults = memory_app()

    @celery_defaults.task
    def default() -> None: ...

    assert (default.max_retries, default.default_retry_delay) == (3, 180.0)
    celery_defaults.close()


def test_eager_retries_follow_task_max_retries() -> None:
    app = memory_app(task_max_retries=2)
    seen: list[int] = []

    @app.task(bind=True)
    def always(self: Task[[], None]) -> None:
        seen.append(self.request.retries)
        raise self.retry()

    with pytest.raises(MaxRetriesExceededError):
        always.apply()
    assert seen == [0, 1, 2]
    app.close()


def test_async_task_apply(app: Celeriac) -> None:
    @app.task
    async def double(x: int) -> int:
        return x * 2

    assert double.is_async
    assert double.apply((21,)).get() == 42


def test_shared_task_follows_the_current_app() -> None:
    @shared_task
    def shared_add(x: int, y: int) -> int:
        return x + y

    app = Celeriac("later", broker="memory://shared")
    assert shared_add.name in app.tasks
    assert shared_add(1, 1) == 2
    app.close()


def test_signature_clone_and_immutable(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sig = add.s(2)
    assert sig.clone((3,))["args"] == [3, 2]
    assert add.si(2, 2).clone((9,))["args"] == [2, 2]
    assert dict(sig)["task"] == add.name


def test_eager_fixture(celeriac_eager_app: Celeriac) -> None:
    @celeriac_eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(2, 3).get() == 5


def test_worker_fixture(celeriac_app: Celeriac, celeriac_worker: object) -> None:
    @celeriac_app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(2, 3).get(timeout=5) == 5


def test_an_all_async_app_gets_async_slots_per_child(app: Celeriac) -> None:
    from celeriac.worker.config import choose_config

    @app.task
    async def fetch(url: str) -> str:
        return url

    for name in set(app.user_tasks) - {fetch.name}:  # shared tasks of other tests
        del app.tasks[name]
    app.conf.broker_url = "sqlite:////tmp/unused.db"
    config = choose_config(app, concurrency=2)
    assert "celery.map" in app.tasks and "celery.map" not in app.user_tasks
    assert (config.processes, config.slots_per_process) == (2, app.conf.worker_async_concurrency)
