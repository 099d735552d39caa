"""celeriac's operations plane on kombu's Redis layout against real Celery 5.7.

Events and the mailbox travel as kombu's Redis transport carries them
(:mod:`celeriac.redis.kombu_operations`): Celery's ``EventReceiver`` hears
celeriac's events and celeriac hears a Celery ``EventDispatcher``'s (grouped
task events too); ``celery inspect ping`` gets a celeriac node's answer, and
celeriac gets a real Celery worker's. Each test has a key prefix of its own
(kombu's ``global_keyprefix``), which kombu puts before its pub/sub channels too.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers import broker_from_url
from celeriac.brokers.operations import REPLY_EXCHANGE, Operations, Received, Subscription
from celeriac.redis.url import split_prefix

from .celery_peers import running
from .services import redis_url

celery = pytest.importorskip("celery")

WAIT = 10.0

PEER_WORKER = """
import sys
from celery import Celery

broker, prefix, name, queue = sys.argv[1:]
app = Celery("ops-peer", broker=broker)
app.conf.update(broker_transport_options={"global_keyprefix": prefix}, accept_content=["json"])
app.worker_main(["worker", "-P", "solo", "-n", name, "-Q", queue, "-l", "warning",
                 "--without-mingle", "--without-gossip", "--without-heartbeat"])
"""
"""A Celery worker whose keys (and pub/sub channels) are under a prefix: argv broker URL,
prefix, node name, the queue it consumes (one of its own, so it takes nobody's tasks)."""


@pytest.fixture
def urls() -> tuple[str, str, str]:
    """celeriac's URL (kombu's layout), Celery's broker URL, and their key prefix."""
    url = redis_url()
    plain, prefix = split_prefix(url)
    return f"{url}&layout=kombu", plain, prefix


@pytest.fixture
async def ops(urls: tuple[str, str, str]) -> AsyncIterator[Operations]:
    broker = broker_from_url(urls[0])
    await broker.connect()
    yield broker.operations()
    await broker.close()


@pytest.fixture
def celery_app(urls: tuple[str, str, str]) -> Iterator[Any]:
    app = celery.Celery("ops-interop", broker=urls[1], set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": urls[2]},
        accept_content=["json"],
        event_serializer="json",
    )
    yield app
    app.close()


def event(host: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "hostname": host,
        "timestamp": time.time(),
        "utcoffset": 0,
        "pid": 1,
        "clock": 1,
        **fields,
    }


async def from_host(subscription: Subscription, host: str, count: int) -> list[Received]:
    """The next ``count`` events of ``host`` (others are skipped)."""
    found: list[Received] = []
    deadline = time.monotonic() + WAIT
    while len(found) < count:
        received = await subscription.get(max(deadline - time.monotonic(), 0.0))
        assert received is not None, f"got {len(found)} of {count} events from {host}"
        if received.body.get("hostname") == host:
            found.append(received)
    return found


async def test_celerys_event_receiver_gets_celeriacs_events(
    ops: Operations, celery_app: Any
) -> None:
    host = f"sender-{uuid.uuid4().hex}@test"
    task_id = str(uuid.uuid4())
    got: list[dict[str, Any]] = []

    def capture() -> None:
        with celery_app.connection_for_read() as connection:

            def on_event(received: dict[str, Any]) -> None:
                got.append(received)
                if received["type"] == "task-succeeded":
                    receiver.should_stop = True

            receiver = celery_app.events.Receiver(connection, handlers={"*": on_event})
            receiver.capture(timeout=WAIT, wakeup=False)

    capturing = asyncio.ensure_future(asyncio.to_thread(capture))
    deadline = time.monotonic() + WAIT
    while not got:  # until Celery listens: nothing is kept for a late listener
        assert time.monotonic() < deadline and not capturing.done(), "Celery heard nothing"
        await ops.send_events([event(host, "worker-heartbeat", freq=2.0, active=0)])
        await asyncio.sleep(0.05)
    await ops.send_events(
        [
            event(host, "task-received", uuid=task_id, name="interop.add", args="(1, 2)"),
            event(host, "task-succeeded", uuid=task_id, result="3", runtime=0.01),
        ]
    )
    await asyncio.wait_for(capturing, WAIT)
    tasks = [e for e in got if e["type"].startswith("task-")]
    assert [(e["type"], e["uuid"], e["hostname"]) for e in tasks] == [
        ("task-received", task_id, host),
        ("task-succeeded", task_id, host),
    ]
    assert tasks[0]["name"] == "interop.add" and tasks[1]["result"] == "3"


async def test_celeriac_gets_the_events_of_celerys_dispatcher(
    ops: Operations, celery_app: Any
) -> None:
    """A Celery worker sends task events in groups (a list body): each arrives alone."""
    host = f"dispatcher-{uuid.uuid4().hex}@test"
    task_id = str(uuid.uuid4())

    def send() -> None:
        with celery_app.connection_for_write() as connection:
            dispatcher = celery_app.events.Dispatcher(
                connection, hostname=host, buffer_group=["task"], buffer_limit=2
            )
            dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=0)
            dispatcher.send("task-started", uuid=task_id)
            dispatcher.send("task-succeeded", uuid=task_id, result="3")  # flushes the group
            dispatcher.close()

    async with await ops.subscribe_events() as events:
        await asyncio.to_thread(send)
        got = await from_host(events, host, 3)
    assert [r.body["type"] for r in got] == ["worker-heartbeat", "task-started", "task-succeeded"]
    assert got[2].body["uuid"] == task_id and got[2].body["result"] == "3"
    assert all(r.headers["hostname"] == host for r in got)


async def test_celery_inspect_ping_hears_a_celeriac_node(ops: Operations, celery_app: Any) -> None:
    name = f"celeriac-{uuid.uuid4().hex}@test"
    heard: list[Received] = []

    async def answer(inbox: Subscription) -> None:
        async for command in inbox:
            heard.append(command)
            body = command.body
            if body["method"] == "ping" and body.get("reply_to"):
                await ops.send_reply(
                    body["reply_to"], {name: {"ok": "pong"}}, {"ticket": body["ticket"], "clock": 1}
                )

    async with await ops.subscribe_commands(name) as inbox:
        answering = asyncio.ensure_future(answer(inbox))
        try:
            replies = await asyncio.to_thread(lambda: celery_app.control.inspect(timeout=2).ping())
        finally:
            answering.cancel()
    assert replies == {name: {"ok": "pong"}}
    assert heard[0].headers["expires"] > time.time() - 5  # Celery's headers: clock, expires
    assert isinstance(heard[0].headers["clock"], int)


@pytest.mark.slow
async def test_celeriac_gets_a_celery_workers_reply(
    ops: Operations, urls: tuple[str, str, str], tmp_path: Path
) -> None:
    name, queue = f"celery-{uuid.uuid4().hex}@test", f"ops-{uuid.uuid4().hex}"
    oid = uuid.uuid4().hex
    command = [sys.executable, "-c", PEER_WORKER, urls[1], urls[2], name, queue]
    with running(command, {}, tmp_path / "celery.log") as worker:
        async with await ops.subscribe_replies(oid) as replies:
            tickets: set[str] = set()
            deadline = time.monotonic() + 30
            reply = None
            while reply is None:  # until the worker listens: a command nobody hears is lost
                assert time.monotonic() < deadline, (tmp_path / "celery.log").read_text()
                assert worker.poll() is None, (tmp_path / "celery.log").read_text()
                ticket = str(uuid.uuid4())
                tickets.add(ticket)
                ping = {
                    "method": "ping",
                    "arguments": {},
                    "destination": [name],
                    "pattern": None,
                    "matcher": None,
                    "ticket": ticket,
                    "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
                }
                await ops.send_command(ping, {"clock": 1, "expires": time.time() + 5})
                reply = await replies.get(0.3)
    assert reply.body == {name: {"ok": "pong"}}
    assert reply.headers["ticket"] in tickets
