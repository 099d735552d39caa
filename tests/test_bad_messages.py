"""Bytes that are not a message cost a dead letter and a log line, never a crash.

A corrupted disk or a foreign writer can put anything into a queue. Each
broker dead-letters such an entry the first time it fetches it (as raw bytes,
with the reason), delivers the rest of the batch, and raises nothing; a real
worker (process pool) keeps its children. Also: the "cannot reach Redis"
error names the URL's own host and port and never suggests turning
persistence off.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from celeriac import Celeriac
from celeriac.brokers.base import BrokerOptions
from celeriac.errors import BackendError, BrokerUnavailable
from celeriac.redis.broker import RedisBroker, _Keys
from celeriac.redis.store import RedisBackend
from celeriac.redis.url import split_prefix, start_hint
from celeriac.sqlite.broker import SQLiteBroker
from celeriac.sqlite.schema import DEAD_LETTERS_TABLE, MESSAGES_TABLE
from celeriac.testing import WorkerProcess

from .conformance.test_broker import numbers, out
from .services import redis_url

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = BrokerOptions(lease_timeout=2.0, poll_interval=0.02)

GOOD = {
    "headers": """CAST('{"id": "x", "task": "t"}' AS BLOB)""",
    "properties": "CAST('{}' AS BLOB)",
    "content_type": "'application/json'",
    "content_encoding": "'utf-8'",
    "body": "CAST('[[0], {}, {}]' AS BLOB)",
}
"""SQL for the message columns of a decodable row, as a foreign writer might put them."""

BAD_COLUMNS = {
    "headers not JSON": ("headers", "CAST('not json' AS BLOB)"),
    "headers not an object": ("headers", "CAST('[1, 2]' AS BLOB)"),
    "headers empty": ("headers", "X''"),
    "properties not JSON": ("properties", "X'FFFE'"),
    "properties null": ("properties", "CAST('null' AS BLOB)"),
    "content_type not UTF-8": ("content_type", "CAST(X'FF' AS TEXT)"),
    "headers a number": ("headers", "5"),
}


def insert_row(path: Path, queue: str = "q", **columns: str) -> int:
    """A row put straight into ``queue``'s messages with plain sqlite3; its id."""
    sql = {**GOOD, **columns}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        cursor = db.execute(
            f"INSERT INTO {MESSAGES_TABLE} (queue, priority, visible_at, {', '.join(sql)})"
            f" VALUES (?, 0, 0, {', '.join(sql.values())})",
            (queue,),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid
    finally:
        db.close()


def table_ids(path: Path, table: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute(f"SELECT id FROM {table} ORDER BY id")]
    finally:
        db.close()


@pytest.fixture
async def sqlite_broker(tmp_path: Path) -> AsyncIterator[SQLiteBroker]:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/broker.db", OPTIONS)
    await broker.connect()  # creates the tables
    yield broker
    await broker.close()


def dead_letter_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "celeriac.broker" and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("bad", list(BAD_COLUMNS.values()), ids=list(BAD_COLUMNS))
async def test_sqlite_undecodable_row_is_dead_lettered_on_first_sight(
    sqlite_broker: SQLiteBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: tuple[str, str],
) -> None:
    caplog.set_level(logging.ERROR, logger="celeriac.broker")
    path = tmp_path / "broker.db"
    await sqlite_broker.publish([out(1), out(2)])
    bad_id = insert_row(path, **dict([bad]))
    await sqlite_broker.publish([out(3)])
    consumer = sqlite_broker.consumer(["q"], "c")
    deliveries = await consumer.fetch(10, timeout=1)
    assert numbers(deliveries) == [1, 2, 3], "the rest of the batch is delivered"
    [letter] = await sqlite_broker.dead_letters()
    assert letter.message is None and letter.queue == "q"
    assert letter.reason.startswith("undecodable message row: "), letter.reason
    assert letter.raw, "the row's bytes are kept"
    assert bad_id not in table_ids(path, MESSAGES_TABLE)
    assert any("undecodable message row" in line for line in dead_letter_logs(caplog))
    await consumer.close()


async def test_sqlite_fetch_of_only_garbage_goes_on_to_good_messages(
    sqlite_broker: SQLiteBroker, tmp_path: Path
) -> None:
    path = tmp_path / "broker.db"
    insert_row(path, headers="CAST('garbage' AS BLOB)")
    await sqlite_broker.publish([out(1)])
    consumer = sqlite_broker.consumer(["q"], "c")
    assert numbers(await consumer.fetch(1, timeout=1)) == [1]
    assert len(await sqlite_broker.dead_letters()) == 1
    assert await consumer.fetch(1, timeout=0.1) == []
    await consumer.close()


# -- Redis ------------------------------------------------------------------------------

GARBAGE_ENTRIES = {
    "h not JSON": {"h": b"not json", "b": b"x"},
    "h an object": {"h": b'{"a": 1}', "b": b"x"},
    "h a number": {"h": b"5", "b": b"x"},
    "no h at all": {"z": b"1"},
}


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
async def redis_broker(url: str) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(url, OPTIONS)
    await broker.connect()
    yield broker
    await broker.close()


@pytest.mark.parametrize("fields", list(GARBAGE_ENTRIES.values()), ids=list(GARBAGE_ENTRIES))
async def test_redis_fetch_of_only_garbage_raises_nothing(
    redis_broker: RedisBroker,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, bytes],
) -> None:
    caplog.set_level(logging.ERROR, logger="celeriac.broker")
    stream = redis_broker._keys.stream("q", 0)
    await raw.xadd(stream, fields)  # type: ignore[arg-type]
    consumer = redis_broker.consumer(["q"], "c")
    assert await consumer.fetch(10, timeout=0.2) == []
    [letter] = await redis_broker.dead_letters()
    assert letter.message is None and letter.queue == "q"
    assert letter.reason.startswith("undecodable stream entry: "), letter.reason
    assert await raw.xlen(stream) == 0, "the garbage is gone from the queue"
    assert any("undecodable stream entry" in line for line in dead_letter_logs(caplog))
    await redis_broker.publish([out(1)])
    assert numbers(await consumer.fetch(10, timeout=1)) == [1]
    await consumer.close()


async def test_redis_garbage_ahead_of_good_messages_is_skipped(
    redis_broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await raw.xadd(redis_broker._keys.stream("q", 0), {"h": b"garbage", "b": b""})
    await redis_broker.publish([out(1), out(2)])
    consumer = redis_broker.consumer(["q"], "c")
    assert numbers(await consumer.fetch(1, timeout=1)) == [1]
    assert numbers(await consumer.fetch(1, timeout=1)) == [2]
    assert len(await redis_broker.dead_letters()) == 1
    await consumer.close()


# -- A real worker (process pool) --------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    return {
        "CELERIAC_BROKER_LEASE_TIMEOUT": "2",
        "CELERIAC_RESULT_BACKEND": f"sqlite:///{tmp_path}/results.db",
        "RUN_LOG": str(tmp_path / "runs.log"),
    }


@pytest.fixture
def client(worker_env: dict[str, str]) -> Iterator[Callable[[str], Celeriac]]:
    apps: list[Celeriac] = []

    def make(broker_url: str) -> Celeriac:
        worker_env["CELERIAC_BROKER_URL"] = broker_url
        app = Celeriac(
            "client",
            broker=broker_url,
            backend=worker_env["CELERIAC_RESULT_BACKEND"],
            set_as_current=False,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def run_worker_around_garbage(
    app: Celeriac,
    env: dict[str, str],
    tmp_path: Path,
    plant: Callable[[], object],
    dead_letters: Callable[[], int],
) -> str:
    """Good tasks, then ``plant``ed garbage, then a worker, then more good tasks; its log."""
    before = [app.send_task("tests.apps.durable.work", (i, 0.0)) for i in range(3)]
    plant()
    worker = WorkerProcess(
        "tests.apps.durable", "-c", "1", cwd=ROOT, env=env, log=tmp_path / "worker.log"
    )
    with worker:
        assert [r.get(timeout=30) for r in before] == [0, 1, 2]
        wait_for(lambda: dead_letters() == 1, 10)
        after = [app.send_task("tests.apps.durable.work", (i, 0.0)) for i in range(3, 6)]
        assert [r.get(timeout=30) for r in after] == [3, 4, 5]
        time.sleep(0.5)  # a child that crashed on the garbage would be reported by now
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    log = worker.log()
    assert "crashed" not in log and "starting a replacement" not in log, log
    return log


@pytest.mark.slow
def test_sqlite_worker_keeps_its_children_past_an_undecodable_row(
    client: Callable[[str], Celeriac], worker_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "broker.db"
    log = run_worker_around_garbage(
        client(f"sqlite:///{path}"),
        worker_env,
        tmp_path,
        lambda: insert_row(path, "celery", headers="CAST('{corrupted' AS BLOB)"),
        lambda: len(table_ids(path, DEAD_LETTERS_TABLE)),
    )
    assert "undecodable message row" in log


@pytest.mark.slow
def test_redis_worker_keeps_its_children_past_a_garbage_entry(
    client: Callable[[str], Celeriac], worker_env: dict[str, str], tmp_path: Path, url: str
) -> None:
    keys = _Keys(split_prefix(url)[1])
    sync = redis.Redis.from_url(url.partition("?")[0])
    try:
        log = run_worker_around_garbage(
            client(url),
            worker_env,
            tmp_path,
            lambda: sync.xadd(keys.stream("celery", 0), {"h": b"{corrupted"}),
            lambda: int(sync.xlen(keys.dead)),
        )
    finally:
        sync.close()
    assert "undecodable stream entry" in log


# -- The "cannot reach Redis" hint --------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_unreachable_redis_broker_hint_names_the_urls_own_port(scheme: str) -> None:
    port = closed_port()
    broker = RedisBroker(f"{scheme}://user:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.connect()
    await broker.close()
    assert_good_hint(str(caught.value), port, tls=scheme == "rediss")


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_unreachable_redis_backend_hint_names_the_urls_own_port(scheme: str) -> None:
    port = closed_port()
    backend = RedisBackend(f"{scheme}://:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(BackendError) as caught:
        await backend.connect()
    await backend.close()
    assert_good_hint(str(caught.value), port, tls=scheme == "rediss")


def assert_good_hint(message: str, port: int, *, tls: bool) -> None:
    assert f"127.0.0.1:{port}" in message, message
    _, _, hint = message.rpartition("; ")
    assert f"--port {port}" in hint or f"--tls-port {port}" in hint, hint
    assert "6379" not in message, message
    assert "appendonly" not in message and "--save" not in message, message
    assert "s3cret" not in message, message
    assert ("TLS" in hint) == tls, hint


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://redis.example.com", "start Redis on redis.example.com:6379, e.g.: "),
        ("rediss://u:s3cret@[::1]:7000/0", "start Redis with TLS on [::1]:7000, e.g.: "),
    ],
)
def test_start_hint_without_a_port_or_with_ipv6(url: str, expected: str) -> None:
    hint = start_hint(url)
    assert hint.startswith(expected), hint
    assert "s3cret" not in hint and "appendonly" not in hint
