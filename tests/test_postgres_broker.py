"""The PostgreSQL broker beyond the conformance suite: wake-ups, migrations, real processes.

Against the real server (``tests/services.py``: skips locally without it,
fails under CI), each test in a schema of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions, QueueStats
from celeriac.errors import BrokerError, BrokerUnavailable
from celeriac.postgres.broker import PostgresBroker
from celeriac.postgres.connection import one_round_trip, open_pool
from celeriac.postgres.notify import channel_for
from celeriac.postgres.schema import MIGRATIONS, all_sql, migrate
from celeriac.postgres.url import split_schema
from celeriac.protocol import Message, Outgoing
from celeriac.shared_storage import StorageWrite

from .services import postgres_url

pytestmark = pytest.mark.slow

LEASE = 0.5
OPTIONS = BrokerOptions(lease_timeout=LEASE, poll_interval=0.02)
EMPTY = QueueStats(0, 0, 0)

# Run as ``python -c CHILD url mode ...``; prints JSON lines on stdout.
CHILD = """
import asyncio, json, sys, time
from celeriac.brokers.base import BrokerOptions
from celeriac.postgres.broker import PostgresBroker
from celeriac.protocol import Message, Outgoing

url, mode, *args = sys.argv[1:]

async def main():
    broker = PostgresBroker(url, BrokerOptions(lease_timeout=float(args[0])))
    if mode == "publish":  # all at once: args[2] is the UNIX time to connect at
        await asyncio.sleep(float(args[2]) - time.time())
    await broker.connect()
    if mode == "publish":
        await broker.publish([Outgoing("q", Message({"task": "t", "id": args[1]}, b"[]"))])
        print(json.dumps("published"), flush=True)
    else:
        consumer = broker.consumer(["q"], "holder")
        deliveries = await consumer.fetch(int(args[1]), timeout=5)
        print(json.dumps([d.message.headers["id"] for d in deliveries]), flush=True)
        await asyncio.sleep(float(args[2]))
        for d in deliveries:
            await consumer.ack(d)
        await consumer.close()
        print(json.dumps("done"), flush=True)
    await broker.close()

asyncio.run(main())
"""


async def child(url: str, *args: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, *map(str, args), stdout=asyncio.subprocess.PIPE
    )


async def read_line(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    return json.loads(line)


def message(task_id: str) -> Message:
    return Message({"task": "t", "id": task_id}, b"[]")


@pytest.fixture
def url() -> str:
    return postgres_url()


@pytest.fixture
async def broker(url: str) -> AsyncIterator[PostgresBroker]:
    broker = PostgresBroker(url, OPTIONS)
    await broker.connect()
    yield broker
    await broker.close()


async def scans(url: str) -> int:
    """Index and table scans of this schema's messages table so far, by the server's count."""
    _, schema = split_schema(url)
    await asyncio.sleep(1.2)  # backends report their counts at most once a second
    async with await psycopg.AsyncConnection.connect(
        postgres_url(schema=False), autocommit=True
    ) as conn:
        cur = await conn.execute(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
            " WHERE schemaname = %s AND relname = 'celeriac_messages'",
            (schema,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_an_idle_consumer_queries_nothing_and_a_publish_wakes_it(
    url: str, broker: PostgresBroker
) -> None:
    consumer = broker.consumer(["q"], "idle")
    assert await consumer.fetch(1, timeout=0.1) == []  # the one look
    looks, before = consumer.looks, await scans(url)
    for _ in range(4):  # a worker's loop: fetch after fetch, half a second each
        assert await consumer.fetch(1, timeout=0.5) == []
    assert await scans(url) == before, "an idle consumer queried the messages table"
    assert consumer.looks == looks

    peer = PostgresBroker(url, OPTIONS)
    await peer.connect()
    waiting = asyncio.ensure_future(consumer.fetch(1, timeout=10))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    await peer.publish([Outgoing("q", message("wake"))])
    [delivery] = await waiting
    assert time.monotonic() - start < 0.2
    assert delivery.message.headers["id"] == "wake"
    await consumer.ack(delivery)
    await consumer.close()
    await peer.close()


async def test_a_delayed_message_wakes_its_consumer_when_due(broker: PostgresBroker) -> None:
    consumer = broker.consumer(["q"], "c")
    assert await consumer.fetch(1, timeout=0.1) == []
    await broker.publish([Outgoing("q", message("later"), not_before=time.time() + 0.5)])
    start = time.monotonic()
    [delivery] = await consumer.fetch(1, timeout=5)
    assert 0.4 <= time.monotonic() - start < 1.0
    await consumer.ack(delivery)
    await consumer.close()


async def test_a_lost_listener_falls_back_to_polling_and_comes_back(
    url: str, broker: PostgresBroker
) -> None:
    consumer = broker.consumer(["q"], "c")
    assert await consumer.fetch(1, timeout=0.1) == []
    listener = broker.listener()
    assert listener.healthy
    async with await psycopg.AsyncConnection.connect(
        postgres_url(schema=False), autocommit=True
    ) as admin:
        cur = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
            (f'LISTEN "{channel_for(url, "q")}"',),
        )
        assert await cur.fetchall() == [(True,)]
    waiting = asyncio.ensure_future(consumer.fetch(1, timeout=10))
    await asyncio.sleep(0.01)  # the publish's notification goes nowhere: nobody listens
    await broker.publish([Outgoing("q", message("unheard"))])
    [delivery] = await waiting
    assert delivery.message.headers["id"] == "unheard"
    await consumer.ack(delivery)
    for _ in range(100):
        if listener.healthy:
            break
        await asyncio.sleep(0.05)
    assert (listener.healthy, listener.reconnects) == (True, 1)
    waiting = asyncio.ensure_future(consumer.fetch(1, timeout=10))
    await asyncio.sleep(0.2)
    start = time.monotonic()
    await broker.publish([Outgoing("q", message("heard"))])
    assert [d.message.headers["id"] for d in await waiting] == ["heard"]
    assert time.monotonic() - start < 5  # woken by the notification, not the 30 s look
    await consumer.close()


async def test_migrations_apply_to_an_empty_schema_once(url: str) -> None:
    pool = await open_pool(url)
    async with pool.connection() as conn:
        assert [m.version for m in await migrate(conn)] == [m.version for m in MIGRATIONS]
        assert await migrate(conn) == []
        versions = await (await conn.execute("SELECT version FROM celeriac_schema")).fetchall()
        assert sorted(v for (v,) in versions) == [m.version for m in MIGRATIONS]
        tables = await table_names(conn)
    await pool.close()
    assert {"celeriac_messages", "celeriac_dead_letters"} <= tables

    by_hand = postgres_url()  # `celeriac db sql`, run as a DBA would, makes the same tables
    pool = await open_pool(by_hand)
    async with pool.connection() as conn:
        await conn.execute(all_sql().encode())
        assert await table_names(conn) == tables
        assert await migrate(conn) == []
    await pool.close()


async def table_names(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {name for (name,) in await cur.fetchall()}


async def test_concurrent_first_use_from_processes_migrates_once(url: str) -> None:
    start_at = time.time() + 1.5  # every process imported and waiting by then
    processes = [await child(url, "publish", 10, f"m{i}", start_at) for i in range(6)]
    for process in processes:
        assert await read_line(process) == "published"
        assert await process.wait() == 0
    broker = PostgresBroker(url, OPTIONS)
    await broker.connect()
    assert await broker.stats("q") == QueueStats(6, 0, 0)
    async with broker.session() as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT version) FROM celeriac_schema")
        assert await cur.fetchone() == (len(MIGRATIONS), len(MIGRATIONS))
    await broker.close()


async def test_a_killed_workers_tasks_return_after_the_lease(broker: PostgresBroker) -> None:
    await broker.publish([Outgoing("q", message(i)) for i in ("m1", "m2", "m3")])
    holder = await child(broker.url, "hold", LEASE, 3, 60)
    held = await read_line(holder)
    assert held == ["m1", "m2", "m3"]
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    killed = time.monotonic()
    consumer = broker.consumer(["q"], "survivor")
    deliveries = await consumer.fetch(3, timeout=LEASE * 6)
    assert time.monotonic() - killed < LEASE * 3
    assert [d.message.headers["id"] for d in deliveries] == held
    assert {d.delivery_count for d in deliveries} == {2}
    for d in deliveries:
        await consumer.ack(d)
    await consumer.close()
    assert await broker.stats("q") == EMPTY


async def test_a_live_worker_process_keeps_a_long_task(broker: PostgresBroker) -> None:
    await broker.publish([Outgoing("q", message("long"))])
    holder = await child(broker.url, "hold", LEASE, 1, LEASE * 5)
    assert await read_line(holder) == ["long"]
    consumer = broker.consumer(["q"], "other")
    start = time.monotonic()
    done = asyncio.ensure_future(read_line(holder))
    while not done.done():
        assert await consumer.fetch(1, timeout=0.2) == []
    assert done.result() == "done"
    assert await holder.wait() == 0
    assert time.monotonic() - start >= LEASE * 4
    assert await broker.stats("q") == EMPTY
    await consumer.close()


async def test_an_unreachable_server_fails_fast_naming_the_url_and_the_fix() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"
    broker = broker_from_url(url, BrokerOptions(connect_timeout=1))
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1.*pg_isready"):
        await broker.connect()
    assert time.monotonic() - start < 3


async def test_a_publish_is_one_round_trip_and_a_failed_one_keeps_nothing(
    broker: PostgresBroker,
) -> None:
    """BEGIN, the carried writes, the rows, the NOTIFY and COMMIT go with one Sync; when a
    carried write fails, the message is not kept and the connection goes back clean."""
    await broker.publish([Outgoing("q", message("warm"))])
    async with broker.session() as conn:
        syncs = 0
        read, write = os.pipe()
        conn.pgconn.trace(write)
        try:
            async with one_round_trip(conn) as cur:
                await cur.execute("SELECT 1")
                await cur.execute("SELECT 2")
        finally:
            conn.pgconn.untrace()
            os.close(write)
            with os.fdopen(read) as trace:
                syncs = sum("\tSync" in line for line in trace)
    assert syncs == 1

    bad = StorageWrite("INSERT INTO celeriac_no_such_table VALUES (%s)", [(1,)])
    with pytest.raises(BrokerError, match="celeriac_no_such_table"):
        await broker.publish([Outgoing("q", message("lost"))], writes=[bad])
    assert (await broker.stats("q")).ready == 1  # the warm-up message only
    async with broker.session() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
