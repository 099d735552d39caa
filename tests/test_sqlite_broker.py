"""The SQLite broker across real OS processes sharing one file (no mocks)."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers.base import BrokerOptions, QueueStats
from celeriac.errors import BrokerUnavailable
from celeriac.protocol import Message, Outgoing
from celeriac.sqlite.broker import SQLiteBroker
from celeriac.sqlite.connection import Connection

pytestmark = pytest.mark.slow

LEASE = 0.5
OPTIONS = BrokerOptions(lease_timeout=LEASE, poll_interval=0.02)

# Run as ``python -c CHILD url mode ...``; prints JSON lines on stdout.
CHILD = """
import asyncio, json, sys
from celeriac.brokers.base import BrokerOptions
from celeriac.protocol import Message, Outgoing
from celeriac.sqlite.broker import SQLiteBroker

url, mode, *args = sys.argv[1:]

def message(task_id):
    return Message({"task": "t", "id": task_id}, b"[[], {}, {}]")

async def produce_and_consume(broker, prefix, count):
    published = asyncio.Event()
    consumed = []

    async def produce():
        for i in range(0, count, 10):
            batch = [Outgoing("q", message(f"{prefix}-{j}")) for j in range(i, min(i + 10, count))]
            await broker.publish(batch)
            await asyncio.sleep(0)
        published.set()

    async def consume():
        consumer = broker.consumer(["q"], prefix)
        while True:
            deliveries = await consumer.fetch(20, timeout=1.0)
            if not deliveries and published.is_set():
                break
            for d in deliveries:
                consumed.append(d.message.headers["id"])
                await consumer.ack(d)
        await consumer.close()

    await asyncio.gather(produce(), consume())
    print(json.dumps(consumed), flush=True)

async def hold(broker, limit, seconds):
    consumer = broker.consumer(["q"], "holder")
    deliveries = await consumer.fetch(limit, timeout=5)
    print(json.dumps([d.message.headers["id"] for d in deliveries]), flush=True)
    await asyncio.sleep(seconds)
    for d in deliveries:
        await consumer.ack(d)
    await consumer.close()
    print(json.dumps("done"), flush=True)

async def main():
    broker = SQLiteBroker(url, BrokerOptions(lease_timeout=float(args[0]), poll_interval=0.02))
    await broker.connect()
    if mode == "work":
        await produce_and_consume(broker, args[1], int(args[2]))
    else:
        await hold(broker, int(args[1]), float(args[2]))
    await broker.close()

asyncio.run(main())
"""


async def child(url: str, *args: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, *map(str, args), stdout=asyncio.subprocess.PIPE
    )


async def read_line(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
    return json.loads(line)


async def publish(url: str, ids: list[str]) -> SQLiteBroker:
    broker = SQLiteBroker(url, OPTIONS)
    await broker.connect()
    await broker.publish([Outgoing("q", Message({"task": "t", "id": i}, b"[]")) for i in ids])
    return broker


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


async def test_two_processes_publish_and_consume_every_message(url: str) -> None:
    count = 1500
    workers = [await child(url, "work", 10.0, prefix, count) for prefix in ("a", "b")]
    consumed: list[str] = []
    for worker in workers:
        consumed += await read_line(worker)
        assert await worker.wait() == 0
    expected = {f"{prefix}-{i}" for prefix in ("a", "b") for i in range(count)}
    assert len(consumed) == len(expected)  # none twice
    assert set(consumed) == expected  # none lost
    broker = SQLiteBroker(url, OPTIONS)
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await broker.close()


async def test_killed_consumers_deliveries_go_to_another_process(url: str) -> None:
    broker = await publish(url, ["m1", "m2", "m3"])
    holder = await child(url, "hold", LEASE, 3, 60)
    held = await read_line(holder)
    assert held == ["m1", "m2", "m3"]
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    consumer = broker.consumer(["q"], "survivor")
    deliveries = await consumer.fetch(3, timeout=LEASE * 4)
    assert sorted(d.message.headers["id"] for d in deliveries) == held
    assert {d.delivery_count for d in deliveries} == {2}
    for d in deliveries:
        await consumer.ack(d)
    await consumer.close()
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await broker.close()


async def test_live_consumer_process_keeps_a_long_task(url: str) -> None:
    broker = await publish(url, ["long"])
    holder = await child(url, "hold", LEASE, 1, LEASE * 4)
    assert await read_line(holder) == ["long"]
    consumer = broker.consumer(["q"], "other")
    start = time.monotonic()
    done = asyncio.ensure_future(read_line(holder))
    while not done.done():
        assert await consumer.fetch(1, timeout=0.2) == []
    assert done.result() == "done"
    assert await holder.wait() == 0
    assert time.monotonic() - start >= LEASE * 3
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await consumer.close()
    await broker.close()


async def test_unusable_path_names_the_url() -> None:
    url = "sqlite:////proc/nope/x.db"
    broker = SQLiteBroker(url)
    with pytest.raises(BrokerUnavailable, match="writable") as caught:
        await broker.connect()
    assert url in str(caught.value)
    await broker.close()


async def test_publishes_from_threads_and_tasks_commit_together_and_all_land(url: str) -> None:
    """8 threads, each its own loop and broker, 4 concurrent publishers each: the
    brokers share one publishing connection, whose group commits lose nothing,
    keep each publisher's order, and outlive the close of all but the last broker."""
    threads, tasks, each = 8, 4, 25

    def produce(thread: int) -> None:
        async def main() -> None:
            broker = SQLiteBroker(url, OPTIONS)
            await broker.connect()

            async def one(task: int) -> None:
                for i in range(each):
                    message = Message({"task": "t", "id": f"{thread}-{task}-{i}"}, b"[]")
                    await broker.publish([Outgoing("q", message)])

            await asyncio.gather(*(one(task) for task in range(tasks)))
            await broker.close()

        asyncio.run(main())

    await asyncio.gather(*(asyncio.to_thread(produce, t) for t in range(threads)))
    first, second = SQLiteBroker(url, OPTIONS), SQLiteBroker(url, OPTIONS)
    await first.connect()
    await second.connect()
    assert first._writer is second._writer
    await first.close()
    assert await second.stats("q") == QueueStats(threads * tasks * each, 0, 0)
    consumer = second.consumer(["q"], "reader")
    ids = [d.message.headers["id"] for d in await consumer.fetch(10_000, timeout=1)]
    for producer in {i.rpartition("-")[0] for i in ids}:
        mine = [int(i.rpartition("-")[2]) for i in ids if i.rpartition("-")[0] == producer]
        assert mine == list(range(each))
    await consumer.close()
    await second.close()


async def test_a_failing_publish_in_a_group_commit_fails_alone(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes committed together: one refused by the database fails, the others land."""
    retried: list[int] = []
    commit_each = Connection._commit_each

    def spy(self: Connection, group: Any) -> Any:
        retried.append(len(group))
        return commit_each(self, group)

    monkeypatch.setattr(Connection, "_commit_each", spy)
    broker = SQLiteBroker(url, OPTIONS)
    await broker.connect()
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON celeriac_messages WHEN NEW.queue = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    )
    db.commit()
    db.close()

    async def send(i: int) -> None:
        message = Message({"task": "t", "id": str(i)}, b"[]")
        await broker.publish([Outgoing("poison" if i % 5 == 0 else "q", message)])

    results = await asyncio.gather(*(send(i) for i in range(40)), return_exceptions=True)
    assert retried and max(retried) > 1  # a group failed together, then went one by one
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == list(range(0, 40, 5))
    assert all("refused by the test" in str(results[i]) for i in failed)
    assert await broker.stats("q") == QueueStats(32, 0, 0)
    await broker.close()
