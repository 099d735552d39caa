"""What the SQLite result store promises beyond the conformance suite."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from celeriac import states
from celeriac.backends import BackendOptions, backend_from_url
from celeriac.backends.base import ResultMeta
from celeriac.errors import BackendError
from celeriac.sqlite.store import SQLiteBackend

_spawn = multiprocessing.get_context("spawn")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
async def backend(url: str) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(url)
    await backend.connect()
    yield backend
    await backend.close()


def _wait_in_process(url: str, task_id: str, out: Queue[object]) -> None:
    async def main() -> None:
        backend = backend_from_url(url)
        await backend.connect()
        out.put("waiting")
        got = await backend.wait(task_id, timeout=10, interval=2.0)
        out.put((time.time(), got.result))
        await backend.close()

    asyncio.run(main())


async def test_a_process_waits_while_another_stores(url: str, backend: SQLiteBackend) -> None:
    out: Queue[object] = _spawn.Queue()
    waiter = _spawn.Process(target=_wait_in_process, args=(url, "t-1", out))
    waiter.start()
    try:
        assert await asyncio.to_thread(out.get, timeout=30) == "waiting"
        await asyncio.sleep(0.6)
        began = time.time()
        await backend.store(ResultMeta("t-1", states.SUCCESS, result=[1, 2]))
        report = await asyncio.to_thread(out.get, timeout=10)
    finally:
        await asyncio.to_thread(waiter.join, 10)
        out.close()
        out.join_thread()

    assert waiter.exitcode == 0
    assert isinstance(report, tuple)
    woke_at, result = report
    assert result == [1, 2]
    assert woke_at - began < 0.2


def _connect_at_once(url: str, barrier: Barrier) -> None:
    async def main() -> None:
        backend = backend_from_url(url)
        barrier.wait(30)
        await backend.connect()
        await backend.store(ResultMeta(f"{os.getpid()}", states.SUCCESS))
        await backend.close()

    asyncio.run(main())


async def test_processes_connecting_at_once_all_create_the_schema(url: str) -> None:
    barrier = _spawn.Barrier(4)
    processes = [_spawn.Process(target=_connect_at_once, args=(url, barrier)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        await asyncio.to_thread(process.join, 30)

    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert _count_rows(url) == 4


async def test_writes_to_other_tables_do_not_wake_waiters(
    url: str, backend: SQLiteBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker shares the file; its commits must not make every waiter re-read."""
    reads = 0
    real_get = backend._get

    async def counting_get(key: str) -> bytes | None:
        nonlocal reads
        reads += 1
        return await real_get(key)

    monkeypatch.setattr(backend, "_get", counting_get)
    waiting = asyncio.create_task(backend.wait("t-1", timeout=5, interval=2.0))
    await asyncio.sleep(0.05)
    reads_before = reads

    def broker_traffic() -> None:
        conn = sqlite3.connect(tmp_path / "results.db", isolation_level=None)
        conn.execute("CREATE TABLE celeriac_broker_stand_in (n INTEGER)")
        for n in range(50):
            conn.execute("INSERT INTO celeriac_broker_stand_in VALUES (?)", (n,))
            time.sleep(0.004)
        conn.close()

    await asyncio.to_thread(broker_traffic)
    reads_during = reads - reads_before
    await backend.store(ResultMeta("t-1", states.SUCCESS))
    await waiting

    assert reads_during < 10  # the base's doubling poll looks a few times; not once per commit


async def test_a_missing_directory_names_the_url_and_the_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'results.db'}"

    with pytest.raises(BackendError) as raised:
        await SQLiteBackend(url).connect()

    assert url in str(raised.value)
    assert "mkdir -p" in str(raised.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
async def test_an_unwritable_directory_names_the_url_and_the_fix(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    url = f"sqlite:///{locked / 'results.db'}"

    with pytest.raises(BackendError) as raised:
        await SQLiteBackend(url).connect()

    assert url in str(raised.value)
    assert "not writable" in str(raised.value)


async def test_a_file_that_is_not_a_database_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(b"this is not a SQLite database" * 100)
    url = f"sqlite:///{path}"

    with pytest.raises(BackendError) as raised:
        await SQLiteBackend(url).connect()

    assert url in str(raised.value)


async def test_use_before_connect_is_a_backend_error(url: str) -> None:
    with pytest.raises(BackendError, match="connect"):
        await SQLiteBackend(url).get("t-1")


async def test_a_store_waits_out_another_connections_write_lock(
    url: str, backend: SQLiteBackend, tmp_path: Path
) -> None:
    locked, release = threading.Event(), threading.Event()

    def hold_write_lock() -> None:
        conn = sqlite3.connect(tmp_path / "results.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    await asyncio.to_thread(locked.wait, 5)
    asyncio.get_running_loop().call_later(0.3, release.set)

    began = time.monotonic()
    await backend.store(ResultMeta("t-1", states.SUCCESS))
    await asyncio.to_thread(holder.join, 5)

    assert time.monotonic() - began >= 0.25
    assert await backend.get("t-1") is not None


async def test_expired_rows_are_swept_by_later_writes(url: str) -> None:
    backend = SQLiteBackend(url, BackendOptions(expires=0.05))
    await backend.connect()
    for i in range(10):
        await backend.store(ResultMeta(f"old-{i}", states.SUCCESS))
    await asyncio.sleep(0.1)
    for i in range(64):
        await backend.store(ResultMeta(f"new-{i}", states.STARTED))
    await backend.close()

    assert _count_rows(url) == 64


async def test_the_schema_is_the_documented_one(url: str, backend: SQLiteBackend) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        columns = [
            (row[1], row[2], row[3], row[5])
            for row in conn.execute("PRAGMA table_info(celeriac_results)")
        ]
        journal_mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()

    assert columns == [
        ("key", "TEXT", 0, 1),
        ("value", "BLOB", 1, 0),
        ("expires_at", "REAL", 0, 0),
        ("fence", "INTEGER", 0, 0),
    ]
    assert journal_mode == "wal"


async def test_a_file_from_before_fences_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE celeriac_results (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
            " expires_at REAL)"
        )
    conn.close()
    backend = SQLiteBackend(f"sqlite:///{path}")
    await backend.connect()
    try:
        await backend.store(ResultMeta("t", states.SUCCESS, 1), fence=1)
        await backend.store(ResultMeta("t", states.FAILURE), fence=2)
        meta = await backend.get("t")
        assert meta is not None and meta.status == states.SUCCESS
    finally:
        await backend.close()


def _count_rows(url: str) -> int:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        count: int = conn.execute("SELECT count(*) FROM celeriac_results").fetchone()[0]
    finally:
        conn.close()
    return count
