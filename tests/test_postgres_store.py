"""The PostgreSQL result store beyond the conformance suite: the purge, NOTIFY wake-ups,
their fallback, other processes, and writes made inside someone else's transaction."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from celeriac import Celeriac, states
from celeriac._sync import close_all
from celeriac.backends import BackendOptions, backend_from_url
from celeriac.backends.base import FINAL_FENCE, ResultMeta
from celeriac.errors import BrokerUnavailable
from celeriac.postgres import result_listener
from celeriac.postgres import store as pg_store
from celeriac.postgres.store import PostgresBackend
from celeriac.postgres.url import split_schema
from celeriac.shared_storage import StorageWrite

from .services import postgres_url


@pytest.fixture
def url() -> str:
    return postgres_url()


@pytest.fixture
async def opened(url: str) -> AsyncIterator[list[PostgresBackend]]:
    """Backends the test opens, closed after it."""
    backends: list[PostgresBackend] = []
    yield backends
    for backend in backends:
        await backend.close()


async def open_store(
    url: str, opened: list[PostgresBackend], options: BackendOptions | None = None
) -> PostgresBackend:
    backend = backend_from_url(url, options)
    assert isinstance(backend, PostgresBackend)
    await backend.connect()
    opened.append(backend)
    return backend


async def raw(url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """A plain autocommit connection on the URL's schema, as an operator would open one."""
    libpq, schema = split_schema(url)
    conn = await psycopg.AsyncConnection.connect(libpq, autocommit=True)
    await conn.execute(f'SET search_path TO "{schema}"')
    return conn


async def count(url: str, table: str) -> int:
    conn = await raw(url)
    try:
        row = await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone()
        assert row is not None
        return int(str(row[0]))
    finally:
        await conn.close()


def done(task_id: str, result: object = 7) -> ResultMeta:
    return ResultMeta(task_id, states.SUCCESS, result=result)


async def test_the_store_purges_expired_rows_by_itself(
    url: str, opened: list[PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PostgresBackend, "purge_interval", 0.3)
    backend = await open_store(url, opened, BackendOptions(expires=0.2))
    await backend.store(done(str(uuid.uuid4())))
    await backend.store(done(str(uuid.uuid4())), keep_for=60)
    await backend.mark_done("group", "a")
    await backend.set_chord_size("chord", 2)
    assert await count(url, "celeriac_results") == 2
    await asyncio.sleep(0.1)
    assert await count(url, "celeriac_results") == 2, "not before they expire"

    await asyncio.sleep(0.6)

    assert await count(url, "celeriac_results") == 1, "the one kept longer stays"
    for table in ("celeriac_result_sets", "celeriac_result_members", "celeriac_chords"):
        assert await count(url, table) == 0, table


async def test_a_waiter_sleeps_until_notified_without_polling(
    url: str, opened: list[PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter, storer = await open_store(url, opened), await open_store(url, opened)
    reads: list[str] = []
    read = waiter._get

    async def counted(key: str) -> bytes | None:
        reads.append(key)
        return await read(key)

    monkeypatch.setattr(waiter, "_get", counted)
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(waiter.wait(task_id, timeout=5, interval=0.01))
    await asyncio.sleep(1.0)
    began = time.monotonic()
    await storer.store(done(task_id))

    got = await waiting

    assert got.result == 7 and time.monotonic() - began < 0.2
    assert len(reads) <= 3, f"a polling waiter reads about 100 times in 1 s: {len(reads)}"


async def test_a_lost_listening_connection_falls_back_to_polling(
    url: str, opened: list[PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter, storer = await open_store(url, opened), await open_store(url, opened)
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(waiter.wait(task_id, timeout=10, interval=0.05))
    await asyncio.sleep(0.2)
    listening = waiter._listener._conn
    assert listening is not None

    async def unreachable(*args: object, **kwargs: object) -> None:
        raise BrokerUnavailable("the test keeps the server out of reach")

    monkeypatch.setattr(result_listener, "connect", unreachable)  # no new listening connection
    admin = await raw(url)
    try:
        await admin.execute("SELECT pg_terminate_backend(%s)", (listening.info.backend_pid,))
    finally:
        await admin.close()
    await asyncio.sleep(0.3)
    assert waiter._listener._conn is None
    began = time.monotonic()
    await storer.store(done(task_id))

    got = await waiting

    assert got.result == 7 and time.monotonic() - began < 0.2


async def test_a_result_is_readable_by_a_fresh_process(
    url: str, opened: list[PostgresBackend]
) -> None:
    backend = await open_store(url, opened)
    task_id = str(uuid.uuid4())
    await backend.store(done(task_id, {"total": 3}))
    await backend.close()
    script = (
        "import asyncio, sys\n"
        "from celeriac.backends import backend_from_url\n"
        "async def main():\n"
        "    b = backend_from_url(sys.argv[1]); await b.connect()\n"
        "    m = await b.get(sys.argv[2]); await b.close()\n"
        "    print(m.status, m.result)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, url, task_id, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert out.decode().strip() == "SUCCESS {'total': 3}"


async def run_in_transaction(url: str, writes: list[StorageWrite], commit: bool) -> None:
    """What a broker on the same storage does with the writes: ``executemany`` in its
    own transaction, here rolled back or committed."""
    conn = await raw(url)
    try:
        await conn.set_autocommit(False)
        async with conn.cursor() as cursor:
            for write in writes:
                await cursor.executemany(write.statement, write.args)
        await (conn.commit() if commit else conn.rollback())
    finally:
        await conn.close()


async def test_writes_land_with_the_transaction_that_carries_them(
    url: str, opened: list[PostgresBackend]
) -> None:
    backend = await open_store(url, opened, BackendOptions(expires=600))
    ids = [str(uuid.uuid4()) for _ in range(3)]
    pending = backend.pending_writes([(i, None) for i in ids])

    await run_in_transaction(url, pending, commit=False)
    assert await backend.get_many(ids) == [None, None, None], "rolled back with it"

    await backend.store(done(ids[0]), fence=1)  # a worker was faster than the publish
    await run_in_transaction(url, pending, commit=True)
    got = [m.status if m else None for m in await backend.get_many(ids)]
    assert got == [states.SUCCESS, states.PENDING, states.PENDING], "never over a stored state"

    late = ResultMeta(ids[0], states.FAILURE)
    await run_in_transaction(url, backend.store_writes(late, fence=FINAL_FENCE - 1), commit=True)
    assert (await backend.get(ids[0])) == done(ids[0]), "a SUCCESS never regresses"


async def test_a_result_written_in_another_transaction_wakes_its_waiter(
    url: str, opened: list[PostgresBackend]
) -> None:
    backend = await open_store(url, opened)
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(backend.wait(task_id, timeout=5, interval=2.0))
    await asyncio.sleep(0.3)
    began = time.monotonic()

    await run_in_transaction(url, backend.store_writes(done(task_id), fence=3), commit=True)
    got = await waiting

    assert got.result == 7 and time.monotonic() - began < 0.2


async def test_a_lapsed_chord_claim_is_taken_over_by_a_redelivery(
    url: str, opened: list[PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that completed the chord died before sending the body: the header
    task's redelivery claims it once the lease lapses, and only then."""
    monkeypatch.setattr(pg_store, "CLAIM_SECONDS", 0.2)
    backend = await open_store(url, opened)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    await backend.set_chord_size("g", 2)
    assert await backend.chord_part_return("g", 0, done(ids[0], 0)) is None
    first = await backend.chord_part_return("g", 1, done(ids[1], 1))
    assert first is not None and first.values == [0, 1]

    assert await backend.chord_part_return("g", 1, done(ids[1], 1)) is None, "lease held"
    await asyncio.sleep(0.3)
    second = await backend.chord_part_return("g", 1, done(ids[1], 1))

    assert second is not None and second.values == [0, 1]
    assert not await backend.hold_chord(first), "the dead worker's hold is gone"
    assert await backend.hold_chord(second)


def test_the_marker_goes_with_the_publish_on_a_shared_database(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker and store on one schema: ``delay()`` makes the PENDING marker in the
    publish's transaction, not by the store's own write path."""
    calls: list[object] = []

    async def record(self: object, *args: object) -> None:
        calls.append(args)

    monkeypatch.setattr(PostgresBackend, "store_pending", record)
    app = Celeriac("shared", broker=url, result_backend=url)
    try:

        @app.task
        def noop() -> None: ...

        assert noop.delay().known()
        assert calls == []
    finally:
        app.close()
        close_all()


async def test_a_batchs_markers_never_cover_a_stored_state(url: str) -> None:
    """``send_many`` writes its PENDING markers as one statement: each id gets one, a stored
    result keeps its state, and an id sent twice in one batch gets its marker once."""
    app = Celeriac("batch", broker=url)  # results in the broker's database (the default)
    try:

        @app.task
        def noop() -> None: ...

        done, fresh = str(uuid.uuid4()), str(uuid.uuid4())
        store = await app.abackend()
        await store.store(ResultMeta(done, states.SUCCESS, result=1))
        ids = [done, fresh, fresh, str(uuid.uuid4())]
        await app.asend_many([noop.s().set(task_id=i) for i in ids])
        states_now = [(await store.get(i)) for i in ids]
        assert [m.status if m else None for m in states_now] == [
            states.SUCCESS,
            states.PENDING,
            states.PENDING,
            states.PENDING,
        ]
        assert (await (await app.abroker()).stats("celery")).ready == 4
    finally:
        await app.aclose()


@pytest.mark.parametrize(
    ("result", "reads_after_wake"),
    [(7, 0), ("x" * 7000, 1), ("thé", 1)],
    ids=["short ASCII: carried", "too long: read", "not ASCII: read"],
)
async def test_a_notification_carries_a_short_result(
    url: str,
    opened: list[PostgresBackend],
    monkeypatch: pytest.MonkeyPatch,
    result: object,
    reads_after_wake: int,
) -> None:
    """The waiter of a short ASCII result takes it from the notification, with no read;
    any other result is read after the wake-up, and both arrive whole."""
    waiter, storer = await open_store(url, opened), await open_store(url, opened)
    reads: list[float] = []
    listening = asyncio.Event()  # set by the read after joining the listener (the second)
    read = waiter._get

    async def counted(key: str) -> bytes | None:
        reads.append(time.monotonic())
        value = await read(key)
        if len(reads) == 2:
            listening.set()
        return value

    monkeypatch.setattr(waiter, "_get", counted)
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(waiter.wait(task_id, timeout=5, interval=0.01))
    await asyncio.wait_for(listening.wait(), 5)
    stored_at = time.monotonic()
    await storer.store(ResultMeta(task_id, states.SUCCESS, result=result))
    got = await waiting
    assert got.result == result
    assert len([t for t in reads if t >= stored_at]) == reads_after_wake
