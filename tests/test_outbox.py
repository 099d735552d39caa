"""The outbox relay against the real servers: sends in ``app.transaction(conn)`` with an
``outbox_url`` run if and only if the application's transaction commits, in id order,
at least once, even when the producer or the relay is SIGKILLed.

Each test has its own SQLite file, PostgreSQL schema and broker prefix; the app the
worker and relay processes run is ``tests.apps.outbox_app``, configured from
``CELERIAC_*`` variables, and every execution of its task appends the task id to RUN_LOG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from celeriac import Celeriac
from celeriac.brokers.base import Broker
from celeriac.protocol import Message
from celeriac.testing import WorkerProcess
from celeriac.transactions.relay import RELAYED_HEADER, OutboxRelay

from .services import postgres_url, rabbitmq_url, redis_url
from .worker_processes import ROOT, wait_for

pytestmark = pytest.mark.slow

RECORD = "tests.apps.outbox_app.record"
APP = "tests.apps.outbox_app"
BATCH = 50
"""outbox_batch_size of every test: rows per publish, so the most a killed relay doubles."""
MANY = 2000


# -- the application's side ---------------------------------------------------------


def outbox_env(tmp_path: Path, broker: str, backend: str, outbox: str) -> dict[str, str]:
    """The environment of the relay and worker processes (and the client's settings)."""
    return {
        "CELERIAC_BROKER_URL": broker,
        "CELERIAC_RESULT_BACKEND": backend,
        "CELERIAC_OUTBOX_URL": outbox,
        "CELERIAC_OUTBOX_BATCH_SIZE": str(BATCH),
        "CELERIAC_OUTBOX_POLL_INTERVAL": "0.05",  # SQLite cannot notify: look often (docs)
        "RUN_LOG": str(tmp_path / "runs.log"),
    }


def client_of(env: dict[str, str]) -> Celeriac:
    return Celeriac(
        "client",
        broker=env["CELERIAC_BROKER_URL"],
        backend=env["CELERIAC_RESULT_BACKEND"],
        outbox_url=env["CELERIAC_OUTBOX_URL"],
        outbox_batch_size=BATCH,
        set_as_current=False,
    )


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    url = redis_url()
    return outbox_env(tmp_path, url, url, f"sqlite:///{tmp_path / 'app.db'}")


def postgres_env(tmp_path: Path) -> dict[str, str]:
    outbox = postgres_url()
    return outbox_env(tmp_path, rabbitmq_url(), outbox, outbox)


def app_db(env: dict[str, str]) -> Any:
    """The application's own connection to the outbox's database (sqlite3 or psycopg)."""
    url = env["CELERIAC_OUTBOX_URL"]
    if url.startswith("sqlite:"):
        return sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)
    return psycopg.connect(postgres_url(schema=False))


def outbox_table(env: dict[str, str]) -> str:
    url = env["CELERIAC_OUTBOX_URL"]
    return (
        "celeriac_outbox"
        if url.startswith("sqlite:")
        else f'"{url.split("schema=")[1]}".celeriac_outbox'
    )


def outbox_count(env: dict[str, str]) -> int:
    db = app_db(env)
    try:
        (count,) = db.execute(f"SELECT count(*) FROM {outbox_table(env)}").fetchone()
        return int(count)
    finally:
        db.close()


def create_outbox(env: dict[str, str]) -> None:
    """As a DBA would: ``celeriac db sql --outbox`` run on the application's database."""
    ddl = celeriac_cli(env, "db", "sql", "--outbox")
    db = app_db(env)
    try:
        if isinstance(db, sqlite3.Connection):
            db.executescript(ddl)
        else:
            db.execute(
                f'CREATE SCHEMA IF NOT EXISTS "{env["CELERIAC_OUTBOX_URL"].split("schema=")[1]}"'
            )
            db.execute(ddl)
            db.commit()
    finally:
        db.close()


def commit_sends(client: Celeriac, env: dict[str, str], count: int) -> list[str]:
    """``count`` sends in one transaction of the application's, committed; their ids."""
    db = app_db(env)
    try:
        with client.transaction(db):
            ids = [client.send_task(RECORD, args=[i]).id for i in range(count)]
        db.commit()
    finally:
        db.close()
    return ids


def runs(env: dict[str, str]) -> Counter[str]:
    path = Path(env["RUN_LOG"])
    return Counter(path.read_text().split() if path.exists() else [])


# -- processes ----------------------------------------------------------------------


def python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python args...`` in the repository with ``env`` added, its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def celeriac_cli(env: dict[str, str], *args: str) -> str:
    done = python(env, "-m", "celeriac", "-A", APP, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_relay(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``celeriac -A tests.apps.outbox_app outbox-relay``, as an operator runs it."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", APP, "outbox-relay"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )


def stop_relay(relay: subprocess.Popen[bytes], log: Path) -> None:
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(20) == 0, log.read_text()


def worker(env: dict[str, str], tmp_path: Path, *args: str) -> WorkerProcess:
    return WorkerProcess(APP, *args, cwd=ROOT, env=env, log=tmp_path / "worker.log")


@contextlib.contextmanager
def broker_of(env: dict[str, str]) -> Iterator[Callable[[Any], Any]]:
    """A loop of the test's own with the client's broker on it: ``call(broker => coro)``."""
    client = client_of(env)
    loop = asyncio.new_event_loop()

    def call(use: Callable[[Broker], Any]) -> Any:
        async def go() -> Any:
            return await use(await client.abroker())

        return loop.run_until_complete(go())

    try:
        yield call
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def ready(env: dict[str, str]) -> int:
    with broker_of(env) as call:
        return int(call(lambda b: b.stats("celery")).ready)


def drain(client: Celeriac, relay: OutboxRelay) -> int:
    """``relay.drain()`` on a loop of its own, closing the client's connections on it after."""

    async def go() -> int:
        try:
            return await relay.drain()
        finally:
            await client.aclose()

    return asyncio.run(go())


def fetch(env: dict[str, str]) -> list[Message]:
    """The messages waiting in the queue, in delivery order (handed back after)."""

    async def fetch_all(broker: Broker) -> list[Message]:
        consumer = broker.consumer(["celery"], "check")
        try:
            return [d.message for d in await consumer.fetch(100, timeout=5)]
        finally:
            await consumer.close()  # hands them back, uncounted

    with broker_of(env) as call:
        return list(call(fetch_all))


def fetch_ids(env: dict[str, str]) -> list[str]:
    return [m.id for m in fetch(env)]


# -- commit, rollback, order ----------------------------------------------------------


def test_sqlite_outbox_on_redis_commit_runs_rollback_never_in_id_order(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    create_outbox(env)
    client = client_of(env)
    db = app_db(env)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    db.commit()
    with client.transaction(db):
        db.execute("INSERT INTO orders VALUES (1)")
        first = [client.send_task(RECORD, args=[i]).id for i in range(3)]
    db.commit()
    with client.transaction(db):
        db.execute("INSERT INTO orders VALUES (2)")
        rolled_back = client.send_task(RECORD, args=[99]).id
    db.rollback()
    with client.transaction(db):
        second = [client.send_task(RECORD, args=[i]).id for i in range(2)]
    db.commit()
    db.close()
    committed = first + second
    assert outbox_count(env) == 5  # nothing of the rolled-back transaction

    relay = OutboxRelay(client)
    assert drain(client, relay) == 5
    assert (relay.stats.published, outbox_count(env)) == (5, 0)

    messages = fetch(env)
    assert [m.id for m in messages] == committed  # published in id order
    assert all(m.headers[RELAYED_HEADER] is True for m in messages)

    with worker(env, tmp_path, "-P", "solo"):
        wait_for(lambda: set(runs(env)) >= set(committed), 20, "the committed tasks ran")
    assert runs(env) == Counter(committed)
    assert rolled_back not in runs(env)
    assert client.AsyncResult(committed[0]).get(timeout=5) == 0
    client.close()


def test_postgres_outbox_on_rabbitmq_commit_runs_rollback_never(tmp_path: Path) -> None:
    """Two relays: one leads and publishes at each commit (NOTIFY), the other stands by
    and takes over when the leader stops."""
    env = postgres_env(tmp_path)
    client = client_of(env)
    logs = [tmp_path / "relay-a.log", tmp_path / "relay-b.log"]
    relays = [start_relay(env, logs[0]), start_relay(env, logs[1])]

    def said(text: str) -> list[int]:
        return [i for i, log in enumerate(logs) if log.exists() and text in log.read_text()]

    wait_for(lambda: said("relay leads") and said("standing by"), 20, "one leads, one stands by")
    (leader,) = said("relay leads")
    try:
        with worker(env, tmp_path, "-P", "solo") as w:
            db = app_db(env)
            try:
                with client.transaction(db):
                    rolled_back = client.send_task(RECORD, args=[99]).id
                db.rollback()
                with client.transaction(db):
                    committed = client.send_task(RECORD, args=[1]).id
                db.commit()
            finally:
                db.close()
            wait_for(lambda: committed in runs(env), 20, "the committed task ran")
            stop_relay(relays[leader], logs[leader])
            standby = 1 - leader
            wait_for(
                lambda: "relay leads" in logs[standby].read_text(), 20, "the standby took over"
            )
            (after,) = commit_sends(client, env, 1)
            wait_for(lambda: after in runs(env), 20, "a task committed after the hand-over ran")
        assert "RelayedDuplicates" in w.log()
    finally:
        for relay, log in zip(relays, logs, strict=True):
            if relay.poll() is None:
                stop_relay(relay, log)
    assert runs(env) == Counter([committed, after])
    assert rolled_back not in runs(env)
    assert outbox_count(env) == 0
    client.close()


# -- processes killed -----------------------------------------------------------------

PRODUCER = textwrap.dedent(
    """
    import os, sqlite3, sys
    from tests.apps.outbox_app import app, record

    db = sqlite3.connect(sys.argv[1], timeout=10)
    with app.transaction(db):
        task_id = record.delay(7).id
    db.commit()
    print(task_id, flush=True)
    os.kill(os.getpid(), 9)  # right after the COMMIT: nothing of the producer's runs after it
    """
)


def test_producer_killed_right_after_its_commit_the_task_still_runs(tmp_path: Path) -> None:
    """Its row is committed: the relay (here beside the worker) publishes it."""
    env = sqlite_env(tmp_path)
    create_outbox(env)
    with worker(env, tmp_path, "-P", "solo", "--outbox-relay") as w:
        producer = python(
            env, "-c", PRODUCER, env["CELERIAC_OUTBOX_URL"].removeprefix("sqlite:///")
        )
        assert producer.returncode == -signal.SIGKILL, producer.stderr
        task_id = producer.stdout.strip()
        wait_for(lambda: task_id in runs(env), 20, "the killed producer's task ran")
    assert runs(env) == Counter([task_id]) and outbox_count(env) == 0, w.log()


def kill_between_publish_and_delete(env: dict[str, str], log: Path) -> int:
    """Start a relay and SIGKILL it once it published a batch it has not deleted yet, past
    some it did; the rows it left."""
    hold = app_db(env)
    relay: subprocess.Popen[bytes] | None = None
    try:
        if isinstance(hold, sqlite3.Connection):
            relay = start_relay(env, log)
            wait_for(lambda: outbox_count(env) <= MANY - 2 * BATCH, 20, "the relay publishing")
            hold.isolation_level = None
            hold.execute("BEGIN")
            (left,) = hold.execute(f"SELECT count(*) FROM {outbox_table(env)}").fetchone()
            assert left > BATCH, "the relay was done before the test could stop it"
        else:  # (FOR UPDATE with OFFSET would lock every row it skipped)
            hold.execute(
                f"SELECT id FROM {outbox_table(env)} WHERE id = (SELECT id FROM "
                f"{outbox_table(env)} ORDER BY id OFFSET %s LIMIT 1) FOR UPDATE",
                (MANY // 2,),
            )
            left = MANY // 2
            relay = start_relay(env, log)
        # One batch more published than deleted: the relay waits to delete it.
        wait_for(lambda: ready(env) == MANY - left + BATCH, 20, "a batch published, not deleted")
        relay.kill()
        relay.wait(10)
        if not isinstance(hold, sqlite3.Connection):  # its DELETE must not go on
            hold.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"DELETE FROM {outbox_table(env)}%",),
            )
        return int(left)
    finally:
        if relay is not None and relay.poll() is None:
            relay.kill()
            relay.wait(10)
        hold.rollback()  # lets the dead relay's locks and rows go
        hold.close()


@pytest.mark.parametrize("dialect", ["sqlite+redis", "postgresql+rabbitmq"])
def test_relay_killed_between_publish_and_delete_loses_nothing(
    tmp_path: Path, dialect: str
) -> None:
    """A relay SIGKILLed after a publish and before its delete: the next relay publishes
    that batch again (at least once, at most one batch twice); the worker, run after the
    relays, skips each copy whose first one already stored its result.

    To land the kill in that gap every time, the test's own connection holds a lock the
    relay's delete needs: SQLite, a read transaction (the relay's COMMIT waits for it);
    PostgreSQL, one row locked ``FOR UPDATE`` (its DELETE waits), whose session the
    test ends with the relay, as the server would once it noticed the client gone."""
    env = sqlite_env(tmp_path) if dialect == "sqlite+redis" else postgres_env(tmp_path)
    create_outbox(env)
    client = client_of(env)
    committed = commit_sends(client, env, MANY)
    client.close()
    left = kill_between_publish_and_delete(env, tmp_path / "relay-1.log")
    assert 0 < outbox_count(env) == left  # its batch was never deleted

    second = start_relay(env, tmp_path / "relay-2.log")
    wait_for(lambda: outbox_count(env) == 0, 20, "the second relay published the rest")
    stop_relay(second, tmp_path / "relay-2.log")
    delivered = ready(env)
    duplicates = delivered - MANY

    def skipped(log: str) -> int:
        return log.count("duplicate of relayed task")

    with worker(env, tmp_path, "-c", "2") as w:
        wait_for(
            lambda: runs(env).total() + skipped(w.log()) >= delivered,
            40,
            "every delivery ran or was skipped",
        )
    ran = runs(env)
    lost = set(committed) - set(ran)
    executions_twice = sum(n - 1 for n in ran.values())
    print(
        f"{dialect}: committed {MANY}, published {delivered} ({duplicates} duplicates), "
        f"ran {ran.total()}, skipped {skipped(w.log())}, ran twice {executions_twice}, "
        f"lost {len(lost)}"
    )
    assert not lost
    assert 0 < duplicates <= BATCH
    assert executions_twice == 0  # each copy came after its first had stored SUCCESS
    assert skipped(w.log()) == duplicates
    assert "skipped: already SUCCESS" in w.log()


# -- rows that are not messages, a broker that is down --------------------------------


def test_a_row_that_is_no_message_is_dead_lettered_and_the_relay_goes_on(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    create_outbox(env)
    client = client_of(env)
    (before,) = commit_sends(client, env, 1)
    db = app_db(env)
    db.execute(  # written by hand, say: headers that are not JSON
        f"INSERT INTO {outbox_table(env)} (queue, priority, not_before, headers, properties, "
        "content_type, content_encoding, body) VALUES ('celery', 0, NULL, x'00ff', '{}', "
        "'application/json', 'utf-8', x'5b5d')"
    )
    db.commit()
    db.close()
    (after,) = commit_sends(client, env, 1)
    relay = OutboxRelay(client)
    assert drain(client, relay) == 3
    assert (relay.stats.published, relay.stats.dead_lettered, outbox_count(env)) == (2, 1, 0)
    with broker_of(env) as call:
        dead = call(lambda b: b.dead_letters("celery"))
        assert call(lambda b: b.stats("celery")).ready == 2
    assert [(d.message, "is not a message" in d.reason) for d in dead] == [(None, True)]
    with worker(env, tmp_path, "-P", "solo"):
        wait_for(lambda: set(runs(env)) == {before, after}, 20, "the good rows ran")
    client.close()


class Forwarder:
    """A TCP port that forwards to Redis once ``open``: a broker that comes back."""

    def __init__(self, port: int):
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def open(self) -> None:
        async def serve() -> asyncio.Server:
            return await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = asyncio.current_task()
        assert pipe is not None
        self._pipes.add(pipe)
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers.add(up_writer)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            """Every connection closed and every pipe ended: nothing left for the GC."""
            if hasattr(self, "_server"):
                self._server.close()
            for writer in self._writers:
                writer.close()  # each pipe's reads then end, and so does the pipe
            if self._pipes:
                await asyncio.wait(self._pipes, timeout=10)
            for writer in self._writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if hasattr(self, "_server"):
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_broker_down_the_rows_stay_and_go_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = redis_url()
    port = free_port()
    down = real.replace(":6379/", f":{port}/")
    env = outbox_env(tmp_path, down, down, f"sqlite:///{tmp_path / 'app.db'}")
    create_outbox(env)
    client = client_of(env)
    committed = commit_sends(client, env, 3)
    relay = OutboxRelay(client)
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(relay.run(stopping),))
    forwarder = Forwarder(port)
    caplog.set_level(logging.INFO, logger="celeriac.relay")
    thread.start()
    try:
        wait_for(lambda: "cannot publish outbox rows" in caplog.text, 20, "the failure logged")
        assert outbox_count(env) == 3
        forwarder.open()
        wait_for(lambda: outbox_count(env) == 0, 20, "the rows published once it was back")
        wait_for(lambda: "relaying again" in caplog.text, 20, "the recovery logged")
    finally:
        loop.call_soon_threadsafe(stopping.set)
        thread.join(20)
        loop.run_until_complete(client.aclose())
        loop.close()
        forwarder.close()
        client.close()
    failures = [r for r in caplog.records if "cannot publish" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR  # one line, not one a try
    assert "the rows stay in the outbox" in failures[0].getMessage()
    assert fetch_ids(outbox_env(tmp_path, real, real, env["CELERIAC_OUTBOX_URL"])) == committed
