"""SQLAlchemy: ``app.transaction(session)`` on a ``Session`` and an ``AsyncSession``.

On the test PostgreSQL, the broker is ``postgresql://`` in a schema of the test's
own (``postgres_url()``), and the application's tables are in that schema too
(its ``search_path``): a task sent in a session's transaction is in the queue
if and only if the session commits, and then a worker runs it and reads the
order committed with it. On SQLite, with ``outbox_url`` naming the session's
database file, the message is a row of ``celeriac_outbox`` on the same terms
(publishing those rows is the relay's, tested with it).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from celeriac import Celeriac, Task
from celeriac.testing import WorkerProcess, worker_thread
from celeriac.transactions.outbox import ddl

from .services import postgres_url

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))


class RefusedError(Exception):
    """The application gives up after writing: its transaction rolls back."""


@dataclass
class Shop:
    app: Celeriac
    url: str
    """The broker's (celeriac's) URL."""
    database_url: str
    """The application's (SQLAlchemy's) URL: the same database and schema."""
    ship: Task[[int], str]


def sqlalchemy_url(url: str, driver: str = "psycopg") -> str:
    """SQLAlchemy's URL for the database and schema of celeriac's ``url``."""
    base, _, query = url.partition("?")
    schema = query.removeprefix("schema=")
    return base.replace("postgresql://", f"postgresql+{driver}://") + (
        f"?options=-csearch_path%3D{schema}"
    )


@pytest.fixture
def shop() -> Iterator[Shop]:
    url = postgres_url()
    database_url = sqlalchemy_url(url)
    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{url.partition("?schema=")[2]}"')
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    app = Celeriac("sa", broker=url, backend=url, set_as_current=False)

    @app.task(name="sa.ship")
    def ship(order_id: int) -> str:
        with sessions() as session:
            return f"shipped {session.get_one(Order, order_id).item}"

    yield Shop(app, url, database_url, ship)
    app.close()
    engine.dispose()


async def aready(app: Celeriac) -> int:
    """Messages waiting in the default queue, as ``celeriac status`` counts them."""
    return (await (await app.abroker()).stats("celery")).ready


def ready(app: Celeriac) -> int:
    async def count() -> int:
        try:
            return await aready(app)
        finally:
            await app.aclose()

    return asyncio.run(count())


def place(session: Session, shop: Shop, item: str) -> str:
    """An order and its task in the session's transaction; the task's id."""
    order = Order(item=item)
    session.add(order)
    session.flush()
    with shop.app.transaction(session):
        return shop.ship.delay(order.id).id


def test_session_rollback_never_runs_commit_runs(shop: Shop) -> None:
    engine = create_engine(shop.database_url)
    sessions = sessionmaker(engine)
    with pytest.raises(RefusedError), sessions.begin() as session:
        rolled_back = place(session, shop, "unicorn")
        raise RefusedError
    assert ready(shop.app) == 0
    with sessions.begin() as session:
        committed = place(session, shop, "teapot")
        assert ready(shop.app) == 0  # another connection sees nothing before the commit
    assert ready(shop.app) == 1
    with worker_thread(shop.app, concurrency=1):
        assert shop.app.AsyncResult(committed).get(timeout=WAIT) == "shipped teapot"
    assert ready(shop.app) == 0
    assert not shop.app.AsyncResult(rolled_back).known()  # never ran, never will
    engine.dispose()


async def test_async_session_rollback_never_runs_commit_runs(shop: Shop) -> None:
    # SQLAlchemy's asyncio needs greenlet (sqlalchemy[asyncio]): without it, this test fails.
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(shop.database_url)
    sessions = async_sessionmaker(engine)
    with pytest.raises(RefusedError):
        async with sessions() as session, session.begin():
            session.add(order := Order(item="unicorn"))
            await session.flush()
            with shop.app.transaction(session):
                rolled_back = await shop.ship.adelay(order.id)
            raise RefusedError
    assert await aready(shop.app) == 0
    async with sessions() as session, session.begin():
        session.add(order := Order(item="teapot"))
        await session.flush()
        with shop.app.transaction(session):
            committed = await shop.ship.adelay(order.id)
        assert await aready(shop.app) == 0
    assert await aready(shop.app) == 1
    with worker_thread(shop.app, concurrency=1):
        assert await committed.aget(timeout=WAIT) == "shipped teapot"
    assert await aready(shop.app) == 0
    assert await rolled_back.ameta() is None  # never ran, never will
    await engine.dispose()
    await shop.app.aclose()


def test_sqlite_session_writes_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:  # the application's migration (celeriac db sql --outbox)
        conn.exec_driver_sql(ddl(url))
    app = Celeriac("sa", broker="memory://", outbox_url=url, set_as_current=False)

    @app.task(name="sa.ship")
    def ship(order_id: int) -> str:
        return "shipped"

    shop = Shop(app, "memory://", url, ship)
    sessions = sessionmaker(engine)

    def outbox_rows() -> int:
        with sqlite3.connect(path) as other:
            count: int = other.execute("SELECT count(*) FROM celeriac_outbox").fetchone()[0]
        other.close()
        return count

    with sessions.begin() as session:
        place(session, shop, "teapot")
    assert outbox_rows() == 1
    with pytest.raises(RefusedError), sessions.begin() as session:
        place(session, shop, "unicorn")
        raise RefusedError
    assert outbox_rows() == 1
    with sessions() as session:
        assert [o.item for o in session.query(Order)] == ["teapot"]
    app.close()
    engine.dispose()


def test_the_example_script(tmp_path: Path) -> None:
    url = postgres_url()
    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{url.partition("?schema=")[2]}"')
    env = {"DATABASE_URL": sqlalchemy_url(url), "BROKER_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "examples.sqlalchemy_orders"],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "unicorn refused" in done.stdout and "1 order(s)" in done.stdout, done.stdout
    match = re.search(r"ship\[([0-9a-f-]+)\] is queued", done.stdout)
    assert match, done.stdout
    client = Celeriac("client", broker=url, backend=url, set_as_current=False)
    assert ready(client) == 1
    worker = WorkerProcess(
        "examples.sqlalchemy_orders", "-P", "solo", cwd=ROOT, env=env, log=tmp_path / "w.log"
    )
    with worker:
        assert client.AsyncResult(match[1]).get(timeout=WAIT) == "shipped order 1: teapot"
    client.close()
