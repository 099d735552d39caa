"""``app.transaction(conn)`` with the PostgreSQL broker: a task sent in the application's
transaction runs if and only if that transaction commits.

Against the real server (``tests/services.py``), each test in a schema of its own; the
application's connections are plain psycopg ones on the database's default
``search_path``, as an application's are.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from celeriac import Celeriac, chain, chord, group
from celeriac.brokers.base import QueueStats
from celeriac.errors import ConfigurationError
from celeriac.testing import memory_app, worker_thread

from .services import postgres_url

pytestmark = pytest.mark.slow

ran: list[int] = []


def make_app(url: str) -> Celeriac:
    app = Celeriac("tx", broker=url, backend=url)

    @app.task(name="tx.add")
    def add(x: int, y: int) -> int:
        ran.append(x)
        return x + y

    @app.task(name="tx.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return app


@pytest.fixture
def url() -> str:
    return postgres_url()


@pytest.fixture
def app(url: str) -> Iterator[Celeriac]:
    ran.clear()
    app = make_app(url)
    yield app
    app.close()


def application_connection(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """The application's own connection: the database, not celeriac's schema."""
    return psycopg.connect(url.partition("?")[0])


def ready(app: Celeriac) -> int:
    async def stats() -> QueueStats:
        return await (await app.abroker()).stats("celery")

    from celeriac._sync import run_sync

    return run_sync(stats).ready


def test_rollback_never_runs_commit_runs(app: Celeriac, url: str) -> None:
    add = app.tasks["tx.add"]
    with application_connection(url) as conn:
        with app.transaction(conn):
            add.delay(1, 1)
        conn.rollback()
        with app.transaction(conn):
            committed = add.delay(2, 2)
        assert ready(app) == 0  # another connection sees nothing before the commit
        conn.commit()
    assert ready(app) == 1
    with worker_thread(app, concurrency=1):
        assert committed.get(timeout=10) == 4
    assert ran == [2]
    assert ready(app) == 0


async def test_async_connection_and_adelay(app: Celeriac, url: str) -> None:
    add = app.tasks["tx.add"]
    async with await psycopg.AsyncConnection.connect(url.partition("?")[0]) as conn:
        async with conn.transaction():
            with app.transaction(conn):
                committed = await add.adelay(3, 3)
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                with app.transaction(conn):
                    await add.adelay(4, 4)
                    1 / 0  # noqa: B018 - the application fails: its transaction rolls back
    with worker_thread(app, concurrency=1):
        assert await committed.aget(timeout=10) == 6
    assert ran == [3]


def test_canvas_joins_the_transaction(app: Celeriac, url: str) -> None:
    add, total = app.tasks["tx.add"], app.tasks["tx.total"]
    with application_connection(url) as conn:
        with app.transaction(conn):
            group(add.s(10, 0), add.s(11, 0)).delay()
            chain(add.s(12, 0), add.s(1)).delay()
        conn.rollback()
        with app.transaction(conn):
            members = group(add.s(20, 0), add.s(21, 0)).delay()
            chained = chain(add.s(22, 0), add.s(1)).delay()
        conn.commit()
    with worker_thread(app, concurrency=2):
        assert members.get(timeout=10) == [20, 21]
        assert chained.get(timeout=10) == 23
    assert sorted(ran) == [20, 21, 22, 22]
    refused = pytest.raises(ConfigurationError, match="chord")
    with application_connection(url) as conn, app.transaction(conn), refused:
        chord([add.s(1, 1)], total.s()).delay()
    assert ready(app) == 0


def test_other_threads_publish_directly(app: Celeriac, url: str) -> None:
    add = app.tasks["tx.add"]
    with application_connection(url) as conn, app.transaction(conn):
        outside = threading.Thread(target=add.delay, args=(5, 5))
        outside.start()
        outside.join()
        assert ready(app) == 1  # published at once, not held by this thread's transaction
        conn.rollback()
    assert ready(app) == 1


PRODUCER = """
import os, signal, sys
import psycopg
from tests.test_transactions import make_app

url, task_id = sys.argv[1:]
app = make_app(url)
with psycopg.connect(url.partition("?")[0]) as conn:
    with app.transaction(conn):
        app.tasks["tx.add"].apply_async((7, 7), task_id=task_id)
    conn.commit()
    os.kill(os.getpid(), signal.SIGKILL)  # right after COMMIT: nothing more runs here
"""


def test_producer_killed_right_after_commit_still_runs(app: Celeriac, url: str) -> None:
    task_id = str(uuid.uuid4())
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, url, task_id], cwd=root, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL
    with worker_thread(app, concurrency=1):
        assert app.AsyncResult(task_id).get(timeout=10) == 14
    assert ran == [7]


def test_needs_the_postgres_broker_or_an_outbox() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="outbox_url"):
        app.transaction(sqlite3.connect(":memory:"))
    app.conf.outbox_url = "redis://localhost/0"
    with pytest.raises(ConfigurationError, match="outbox_url must name"):
        app.transaction(sqlite3.connect(":memory:"))


def test_wrong_connection_is_a_clear_error(app: Celeriac, url: str) -> None:
    add = app.tasks["tx.add"]
    not_postgres = pytest.raises(ConfigurationError, match="PostgreSQL database, not sqlite")
    with app.transaction(sqlite3.connect(":memory:")), not_postgres:
        add.delay(1, 1)
    with app.transaction(object()), pytest.raises(ConfigurationError, match="takes a psycopg"):
        add.delay(1, 1)
    assert ready(app) == 0  # the errors above left nothing behind


def test_sqlite_outbox_made_inside_a_transaction_that_already_wrote(tmp_path: Path) -> None:
    """The first send into a SQLite outbox that does not exist yet, after the application
    wrote in its transaction (so holds the file's write lock): the table is made in that
    transaction, with no wait, and goes away with a rollback."""
    db = tmp_path / "app.db"
    app = memory_app(outbox_url=f"sqlite:///{db}")

    @app.task
    def ship(order: int) -> int:
        return order

    conn = sqlite3.connect(db, timeout=0.5)  # a wait for the lock would fail, not hang
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.commit()

    def outbox_rows() -> list[tuple[object, ...]]:
        look = sqlite3.connect(db)
        try:
            exists = look.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'celeriac_outbox'"
            ).fetchone()
            return look.execute("SELECT queue FROM celeriac_outbox").fetchall() if exists else []
        finally:
            look.close()

    conn.execute("INSERT INTO orders VALUES (1)")
    with app.transaction(conn):
        ship.delay(1)
    conn.rollback()
    assert outbox_rows() == []
    conn.execute("INSERT INTO orders VALUES (2)")
    with app.transaction(conn):
        ship.delay(2)
        ship.delay(3)
    conn.commit()
    assert outbox_rows() == [("celery",), ("celery",)]
    conn.close()
