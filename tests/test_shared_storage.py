"""PENDING markers go with the publish when broker and result store share a database.

The default set-up (one SQLite file) and one Redis database for both: the
marker and the message are one transaction (SQLite) or one round trip (Redis).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import Celeriac, states
from celeriac._sync import close_all
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultBackend, ResultMeta
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions, QueueStats
from celeriac.errors import BrokerError
from celeriac.protocol import Message, Outgoing
from celeriac.sqlite.broker import SQLiteBroker

from .services import REDIS_TEST_DB, postgres_url, redis_url


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Celeriac]:
    app = Celeriac("shared", broker=f"sqlite:///{tmp_path}/celeriac.db")
    yield app
    app.close()
    close_all()


def test_sqlite_marker_and_message_commit_together(sqlite_app: Celeriac, tmp_path: Path) -> None:
    """A publish that fails leaves no PENDING marker behind: one transaction for both."""

    @sqlite_app.task
    def noop() -> None: ...

    assert noop.delay().known()  # the tables exist now
    db = sqlite3.connect(tmp_path / "celeriac.db")
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON celeriac_messages "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    db.commit()
    with pytest.raises(BrokerError, match="refused by the test"):
        noop.apply_async(task_id="never-queued")
    assert not sqlite_app.AsyncResult("never-queued").known()
    db.close()


def test_sqlite_sync_callers_on_many_threads_all_land_with_markers(sqlite_app: Celeriac) -> None:
    """Sync callers publish on their own thread when the connection is free and
    queue for its thread otherwise; under contention every call still lands."""

    @sqlite_app.task
    def noop() -> None: ...

    ids: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        mine = [noop.delay().id for _ in range(40)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 320
    url = sqlite_app.conf.broker_url
    assert url is not None
    assert asyncio.run(ready(url, sqlite_app.conf.task_default_queue)) == 320
    assert all(sqlite_app.AsyncResult(i).known() for i in ids)


async def ready(url: str, queue: str) -> int:
    broker = SQLiteBroker(url)
    try:
        return (await broker.stats(queue)).ready
    finally:
        await broker.close()


@pytest.fixture
def redis_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """One Redis database for both; the store's own write path would fail the test."""

    async def refuse(self: ResultBackend, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("PENDING should go with the publish, not by the store")

    monkeypatch.setattr(ResultBackend, "store_pending", refuse)
    url = redis_url()
    app = Celeriac("shared", broker=url, result_backend=url, result_expires=600)
    yield app
    app.close()
    close_all()


def test_redis_marker_goes_with_the_publish(redis_app: Celeriac) -> None:
    @redis_app.task
    def noop() -> None: ...

    now = noop.delay()
    later = noop.apply_async(countdown=3600)
    assert now.known() and later.known()
    prefix = str(redis_app.conf.result_backend).partition("prefix=")[2]
    raw = redis.Redis("127.0.0.1", 6379, db=REDIS_TEST_DB)
    try:
        assert 590_000 < raw.pttl(f"{prefix}celery-task-meta-{now.id}") <= 600_000
        # a delayed task's marker lasts until result_expires after it is due
        kept = raw.pttl(f"{prefix}celery-task-meta-{later.id}")
        assert 4_190_000 < kept <= 4_200_000
    finally:
        raw.close()


def test_redis_store_writes_itself_when_databases_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = ResultBackend.store_pending

    async def counted(self: ResultBackend, pending: Any) -> None:
        calls.append(len(pending))
        await original(self, pending)

    monkeypatch.setattr(ResultBackend, "store_pending", counted)
    broker = redis_url()
    backend = redis_url(db=REDIS_TEST_DB - 1)
    app = Celeriac("split", broker=broker, result_backend=backend)
    try:

        @app.task
        def noop() -> None: ...

        assert noop.delay().known()
        assert calls == [1]
    finally:
        app.close()
        close_all()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return postgres_url()
    return f"sqlite:///{tmp_path}/shared.db" if request.param == "sqlite" else redis_url()


async def test_an_ack_carries_a_result_and_goes_soon_without_a_fetch(shared_url: str) -> None:
    """A worker's ack can carry its task's result: both land together, promptly, even
    when no fetch comes (the plain ack interval here is far longer)."""
    options = BrokerOptions(ack_flush_interval=30.0)
    broker, backend = broker_from_url(shared_url, options), backend_from_url(shared_url)
    await backend.connect()
    await broker.connect()
    assert broker.storage is not None and broker.storage == backend.storage
    consumer = broker.consumer(["q"], "carrier")
    try:
        await broker.publish([Outgoing("q", Message({"task": "t", "id": "t1"}, b"[]"))])
        (delivery,) = await consumer.fetch(1, timeout=2)
        meta = ResultMeta("t1", states.SUCCESS, result=42)
        await consumer.ack(delivery, backend.store_writes(meta))
        assert await backend.get("t1") is None  # not yet: it rides with the ack
        await asyncio.sleep(0.2)
        stored = await backend.get("t1")
        assert stored is not None and stored.result == 42
        assert await broker.stats("q") == QueueStats(0, 0, 0)

        # With a fetch right after, result and ack travel in the fetch's transaction.
        await broker.publish([Outgoing("q", Message({"task": "t", "id": "t2"}, b"[]"))])
        (delivery,) = await consumer.fetch(1, timeout=2)
        await consumer.ack(delivery, backend.store_writes(ResultMeta("t2", states.FAILURE)))
        assert await consumer.fetch(1, timeout=0) == []
        stored = await backend.get("t2")
        assert stored is not None and stored.status == states.FAILURE
        assert await broker.stats("q") == QueueStats(0, 0, 0)
    finally:
        await consumer.close()
        await broker.close()
        await backend.close()
