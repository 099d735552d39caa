"""The worker, end to end on the in-memory broker (a consume loop in a thread)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from celeriac import Celeriac, Ignore, Reject, SoftTimeLimitExceeded, Task, TaskError, states
from celeriac.errors import NotRegistered, TaskRevokedError, TimeLimitExceeded
from celeriac.protocol import Message, Outgoing
from celeriac.testing import worker_thread


class PaymentDeclined(Exception):
    pass


def test_success_and_failure_round_trip(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def decline(order: int) -> None:
        raise PaymentDeclined(f"order {order}")

    with worker_thread(app):
        assert add.delay(2, 2).get(timeout=5) == 4
        failed = decline.delay(7)
        with pytest.raises(PaymentDeclined, match="order 7"):
            failed.get(timeout=5)
        assert failed.state == states.FAILURE
        assert failed.traceback is not None and "PaymentDeclined" in failed.traceback
        assert isinstance(failed.get(timeout=1, propagate=False), PaymentDeclined)


def test_exception_of_a_module_not_imported_here_is_a_task_error(app: Celeriac) -> None:
    from celeriac.backends.base import ResultMeta

    result = app.AsyncResult("fake")

    async def store() -> None:
        backend = await app.abackend()
        await backend.store(
            ResultMeta(
                "fake",
                states.FAILURE,
                {
                    "exc_type": "Boom",
                    "exc_message": ["kaput"],
                    "exc_module": "not.imported.anywhere",
                },
            )
        )

    from celeriac._sync import run_sync

    run_sync(store)
    with pytest.raises(TaskError, match=r"not\.imported\.anywhere\.Boom: kaput"):
        result.get(timeout=1)


def test_unknown_id_is_told_from_a_pending_one(app: Celeriac) -> None:
    @app.task
    def noop() -> None: ...

    pending = noop.delay()  # no worker: it waits in the broker
    assert pending.state == states.PENDING and pending.known()
    unknown = app.AsyncResult("never-sent")
    assert unknown.state == states.PENDING and not unknown.known()


def test_retry_goes_through_the_broker_with_countdown(app: Celeriac) -> None:
    attempts: list[tuple[int, float]] = []

    @app.task(bind=True, max_retries=5)
    def flaky(self: Task[[], int]) -> int:
        attempts.append((self.request.retries, time.monotonic()))
        if self.request.retries < 2:
            raise self.retry(countdown=0.3)
        return self.request.retries

    with worker_thread(app):
        assert flaky.delay().get(timeout=10) == 2
    assert [a for a, _ in attempts] == [0, 1, 2]
    assert attempts[1][1] - attempts[0][1] >= 0.25
    assert attempts[2][1] - attempts[1][1] >= 0.25


def test_retry_with_new_arguments_keeps_the_messages_serializer() -> None:
    from celeriac.testing import memory_app

    app = memory_app(accept_content=["json", "msgpack"])

    @app.task(bind=True)
    def step(self: Task[[int], int], n: int) -> int:
        if n == 0:
            raise self.retry(args=(n + 1,), countdown=0)
        return n

    try:
        with worker_thread(app):
            assert step.apply_async((0,), serializer="msgpack").get(timeout=10) == 1
    finally:
        app.close()


def test_autoretry_with_backoff_then_failure(app: Celeriac) -> None:
    attempts: list[float] = []

    @app.task(
        autoretry_for=(ConnectionError,), retry_backoff=0.1, retry_jitter=False, max_retries=3
    )
    def fetch() -> None:
        attempts.append(time.monotonic())
        raise ConnectionError("down")

    with worker_thread(app), pytest.raises(ConnectionError):
        fetch.delay().get(timeout=10)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4


def test_soft_time_limit_raises_inside_the_task(app: Celeriac) -> None:
    @app.task(soft_time_limit=0.2)
    def slow() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"

    with worker_thread(app):
        assert slow.delay().get(timeout=5) == "cleaned up"


def test_hard_time_limit_fails_the_task(app: Celeriac) -> None:
    @app.task(time_limit=0.3)
    def stuck() -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.01)

    with worker_thread(app):
        started = time.monotonic()
        with pytest.raises(TimeLimitExceeded):
            stuck.delay().get(timeout=5)
        assert time.monotonic() - started < 2


def test_async_task_and_its_time_limit(app: Celeriac) -> None:
    @app.task
    async def hello(name: str) -> str:
        await asyncio.sleep(0.01)
        return f"hi {name}"

    @app.task(soft_time_limit=0.2)
    async def forever() -> None:
        await asyncio.sleep(30)

    with worker_thread(app):
        assert hello.delay("you").get(timeout=5) == "hi you"
        with pytest.raises(SoftTimeLimitExceeded):
            forever.delay().get(timeout=5)


def test_expired_task_is_revoked_not_run(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task
    def job() -> None:
        ran.append(1)

    result = job.apply_async(expires=0.05)
    time.sleep(0.1)
    with worker_thread(app), pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert ran == []


def test_reject_dead_letters_and_ignore_stores_nothing(app: Celeriac) -> None:
    @app.task
    def refuse() -> None:
        raise Reject("bad input", requeue=False)

    @app.task
    def quiet() -> None:
        raise Ignore()

    with worker_thread(app):
        refused = refuse.delay()
        quieted = quiet.delay()
        deadline = time.monotonic() + 5
        while refused.state != states.REJECTED and time.monotonic() < deadline:
            time.sleep(0.02)
        assert refused.state == states.REJECTED
        time.sleep(0.2)
        assert quieted.state == states.PENDING

    async def letters() -> list[str]:
        broker = await app.abroker()
        return [d.reason for d in await broker.dead_letters()]

    from celeriac._sync import run_sync

    assert any("bad input" in r for r in run_sync(letters))


def _publish_raw(app: Celeriac, message: Message) -> None:
    from celeriac._sync import run_sync

    async def go() -> None:
        broker = await app.abroker()
        await broker.publish([Outgoing("celery", message)])

    run_sync(go)


def test_malformed_and_unknown_messages_go_to_dead_letters_and_worker_goes_on(
    app: Celeriac,
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    _publish_raw(app, Message({"task": add.name, "id": "m1"}, b"{not json"))
    _publish_raw(app, Message({"task": "nobody.knows", "id": "m2"}, b"[[], {}, {}]"))
    _publish_raw(app, Message({"task": add.name, "id": "m3"}, b'"just a string"'))
    _publish_raw(app, Message({"id": "m4"}, b"[[], {}, {}]"))
    _publish_raw(
        app, Message({"task": add.name, "id": "m5"}, b"\x80\x04", "application/x-python-serialize")
    )
    with worker_thread(app):
        assert add.delay(1, 1).get(timeout=5) == 2
        unknown = app.AsyncResult("m2")
        with pytest.raises(NotRegistered, match=r"'nobody\.knows' is not registered"):
            unknown.get(timeout=5)

    async def letters() -> dict[str, str]:
        broker = await app.abroker()
        return {
            str(d.message.headers.get("id")): d.reason
            for d in await broker.dead_letters()
            if d.message
        }

    from celeriac._sync import run_sync

    reasons = run_sync(letters)
    assert set(reasons) == {"m1", "m2", "m3", "m4", "m5"}
    assert "refusing content type 'application/x-python-serialize'" in reasons["m5"]
    assert "unknown task" in reasons["m2"]


def test_rate_limit_spaces_tasks_without_sleeping_in_the_worker(app: Celeriac) -> None:
    stamps: list[float] = []

    @app.task(rate_limit="10/s")
    def tick() -> None:
        stamps.append(time.monotonic())

    with worker_thread(app, concurrency=4):
        results = [tick.delay() for _ in range(6)]
        for r in results:
            r.get(timeout=10)
    span = max(stamps) - min(stamps)
    assert span >= 0.4  # 6 tasks at 10/s with a burst of 1: at least 0.5s apart end to end


def test_link_callback_and_errback(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom() -> None:
        raise ValueError("x")

    seen: list[str] = []

    @app.task
    def record(task_id: str) -> None:
        seen.append(task_id)

    with worker_thread(app):
        first = add.apply_async((2, 2), link=add.s(10))
        assert first.get(timeout=5) == 4
        deadline = time.monotonic() + 5
        failed = boom.apply_async(link_error=record.s())
        with pytest.raises(ValueError):
            failed.get(timeout=5)
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
    assert seen == [failed.id]


def test_track_started_and_ignore_result(app: Celeriac) -> None:
    gate = asyncio.Event()

    @app.task(track_started=True)
    async def waits() -> None:
        await asyncio.wait_for(gate.wait(), 5)

    @app.task(ignore_result=True)
    def ignored() -> int:
        return 1

    with worker_thread(app):
        started = waits.delay()
        deadline = time.monotonic() + 5
        while started.state != states.STARTED and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.state == states.STARTED
        ignored_result = ignored.delay()
        time.sleep(0.3)
        assert not ignored_result.known()
        gate._loop.call_soon_threadsafe(gate.set)  # type: ignore[attr-defined]
        started.get(timeout=5)


def test_get_inside_a_task_is_refused(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def waits_on_child() -> int:
        return add.delay(1, 1).get(timeout=5)

    with worker_thread(app), pytest.raises(RuntimeError, match=r"Never call result\.get"):
        waits_on_child.delay().get(timeout=5)


def test_child_task_ids(app: Celeriac) -> None:
    @app.task(bind=True)
    def parent(self: Task[[], str]) -> str:
        return child.delay().id

    @app.task(bind=True)
    def child(self: Task[[], list[str | None]]) -> list[str | None]:
        return [self.request.parent_id, self.request.root_id]

    with worker_thread(app):
        parent_result = parent.delay()
        child_id = parent_result.get(timeout=5)
        assert app.AsyncResult(child_id).get(timeout=5) == [parent_result.id, parent_result.id]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializer_per_task(serializer: str) -> None:
    from celeriac.testing import memory_app

    app = memory_app(accept_content=["json", "msgpack"])

    @app.task(serializer=serializer)
    def echo(value: dict[str, int]) -> dict[str, int]:
        return value

    with worker_thread(app):
        assert echo.delay({"a": 1}).get(timeout=5) == {"a": 1}
    app.close()


def test_task_routes_and_queues(app: Celeriac) -> None:
    app.conf.task_routes = {"*.mail_*": {"queue": "emails"}}

    @app.task
    def mail_user(user: int) -> int:
        return user

    @app.task(queue="reports")
    def report() -> str:
        return "ok"

    sent = mail_user.delay(1)
    made = report.delay()
    with worker_thread(app, queues=["celery"]):
        time.sleep(0.3)
        assert not sent.ready() and not made.ready()
    with worker_thread(app, queues=["emails", "reports"]):
        assert sent.get(timeout=5) == 1
        assert made.get(timeout=5) == "ok"


def test_sync_and_async_sends_from_inside_an_async_task(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def fan_out() -> list[str]:
        first = await add.adelay(1, 2)
        second = add.delay(3, 4)  # sync call inside a running loop: goes through the portal
        return [first.id, second.id]

    with worker_thread(app):
        ids = fan_out.delay().get(timeout=5)
        assert [app.AsyncResult(i).get(timeout=5) for i in ids] == [3, 7]


async def test_async_client_api(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with worker_thread(app):
        result = await add.adelay(20, 22)
        assert await result.aget(timeout=5) == 42
        by_name = await app.asend_task(add.name, (1, 1))
        assert await by_name.aget(timeout=5) == 2
        assert await by_name.astate() == states.SUCCESS
    await app.aclose()


def test_send_many_in_one_batch(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = app.send_many(add.s(i, i) for i in range(50))
    with worker_thread(app):
        assert [r.get(timeout=5) for r in results] == [2 * i for i in range(50)]


def test_priority_order_on_one_slot(app: Celeriac) -> None:
    order: list[int] = []

    @app.task
    def mark(n: int) -> None:
        order.append(n)

    for n in (0, 3, 9, 5):
        mark.apply_async((n,), priority=n)
    with worker_thread(app, concurrency=1):
        mark.apply_async((-1,), priority=0).get(timeout=5)
    assert order == [9, 5, 3, 0, -1]


def test_secrets_never_reach_the_logs(app: Celeriac, caplog: pytest.LogCaptureFixture) -> None:
    @app.task(redact_kwargs=("card",))
    def charge(order: int, card: str) -> None:
        raise ValueError("declined")

    with caplog.at_level("INFO", logger="celeriac"), worker_thread(app):
        result = charge.delay(7, card="4111-1111-1111-1111")
        with pytest.raises(ValueError, match="declined"):
            result.get(timeout=5)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"[{result.id}] FAILURE" in logged
    assert "'card': '***'" in logged
    assert "1111-1111" not in logged  # any part of the card (not "4111": task ids may hold it)
