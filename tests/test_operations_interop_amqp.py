"""The operations plane on RabbitMQ against Celery 5.7 itself: events and the mailbox both ways.

In a vhost of this run's own (``celeriac-ops-<pid>``), so the exchanges are
Celery's fixed names and no other test's worker answers. Each test still
tells its messages apart by a hostname of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from celeriac.brokers import Broker, broker_from_url
from celeriac.brokers.operations import REPLY_EXCHANGE, Received, Subscription

from .celery_peers import running
from .services import rabbitmq_vhost, rabbitmqctl

celery = pytest.importorskip("celery")
celery_event = pytest.importorskip("celery.events.event")
kombu_base = pytest.importorskip("kombu.transport.base")

VHOST = f"celeriac-ops-{os.getpid()}"
WAIT = 10.0


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    with rabbitmq_vhost(VHOST) as url:
        yield url


@pytest.fixture(scope="module")
def celery_app(broker_url: str) -> Iterator[Any]:
    app = celery.Celery("ops", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    yield app
    app.close()


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    broker = broker_from_url(broker_url)
    await broker.connect()
    yield broker
    await broker.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}@test"


async def next_where(subscription: Subscription, key: str, value: Any) -> Received:
    """The next message whose body has ``key == value`` (others are skipped)."""
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        received = await subscription.get(left)
        if received is not None and received.body.get(key) == value:
            return received
    raise AssertionError(f"no message with {key}={value} within {WAIT} s")


def listed(kind: str, *columns: str) -> dict[str, dict[str, Any]]:
    """``rabbitmqctl list_<kind>`` of the vhost, by name."""
    out = rabbitmqctl(f"list_{kind}", "-p", VHOST, "name", *columns, "--formatter", "json")
    return {row["name"]: row for row in json.loads(out)}


def queue_shape(row: dict[str, Any]) -> tuple[bool, bool, bool, dict[str, Any]]:
    arguments = {name: value for name, _type, value in row["arguments"]}
    return row["durable"], row["auto_delete"], row["exclusive"], arguments


def celery_queue_shape(queue: Any) -> tuple[bool, bool, bool, dict[str, Any]]:
    """What kombu declares for ``queue`` (its flags, and its arguments as sent)."""
    arguments = kombu_base.to_rabbitmq_queue_arguments(
        queue.queue_arguments or {}, expires=queue.expires, message_ttl=queue.message_ttl
    )
    return queue.durable, queue.auto_delete, queue.exclusive, arguments


async def test_celeriacs_entities_are_celerys(broker: Broker, celery_app: Any) -> None:
    """Every exchange and queue celeriac declares has the flags and arguments Celery's
    own declaration has, so neither side's declare is refused."""
    host, oid = unique("entities"), uuid.uuid4().hex
    ops = broker.operations()
    subscriptions = [
        await ops.subscribe_events(),
        await ops.subscribe_commands(host),
        await ops.subscribe_replies(oid),
    ]
    await ops.send_events([{"type": "worker-heartbeat", "hostname": host, "timestamp": 1.0}])
    await ops.send_command({"method": "ping", "destination": [host]}, {"clock": 1, "expires": 0})
    reply_to = {"exchange": REPLY_EXCHANGE, "routing_key": oid}
    await ops.send_reply(reply_to, {host: {"ok": "pong"}}, {"ticket": "t", "clock": 1})
    exchanges = listed("exchanges", "type", "durable", "auto_delete")
    queues = listed("queues", "durable", "auto_delete", "exclusive", "arguments")
    with celery_app.connection_for_write() as connection:
        mailbox = celery_app.control.mailbox(connection)
        receiver = celery_app.events.Receiver(connection)
        for exchange in (
            celery_event.get_exchange(connection, celery_app.conf.event_exchange),
            mailbox.exchange,
            mailbox.reply_exchange,
        ):
            row = exchanges[exchange.name]
            assert (row["type"], row["durable"], row["auto_delete"]) == (
                exchange.type,
                exchange.durable,
                exchange.auto_delete,
            )
        (event_queue,) = [q for q in queues if q.startswith(f"{receiver.queue_prefix}.")]
        assert queue_shape(queues[event_queue]) == celery_queue_shape(receiver.queue)
        node_queue = mailbox.get_queue(host)
        assert queue_shape(queues[node_queue.name]) == celery_queue_shape(node_queue)
        reply_queue = f"{oid}.{mailbox.reply_exchange.name}"
        assert queue_shape(queues[reply_queue]) == celery_queue_shape(mailbox.reply_queue)
    for subscription in subscriptions:
        await subscription.close()


async def test_celerys_receiver_gets_celeriacs_events(broker: Broker, celery_app: Any) -> None:
    host = unique("to-celery")
    sent = [
        {"type": "worker-online", "hostname": host, "timestamp": time.time(), "clock": 1},
        {"type": "task-succeeded", "hostname": host, "uuid": "u1", "result": "3", "clock": 2},
    ]
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def capture() -> None:
        with celery_app.connection_for_read() as connection:

            def on_event(event: dict[str, Any]) -> None:
                if event.get("hostname") == host:
                    got.append(event)
                    receiver.should_stop = len(got) == len(sent)

            receiver = celery_app.events.Receiver(connection, handlers={"*": on_event})
            receiver.on_consume_ready = lambda *args, **kwargs: ready.set()
            receiver.capture(timeout=WAIT, wakeup=False)

    capturing = asyncio.create_task(asyncio.to_thread(capture))
    assert await asyncio.to_thread(ready.wait, WAIT)
    await broker.operations().send_events(sent)
    await capturing
    assert [(e["type"], e.get("uuid"), e.get("result")) for e in got] == [
        ("worker-online", None, None),
        ("task-succeeded", "u1", "3"),
    ]


async def test_celerys_dispatcher_reaches_celeriac(broker: Broker, celery_app: Any) -> None:
    """A Celery worker's dispatcher buffers task events into one ``task.multi`` list:
    each item arrives as an event of its own."""
    host = unique("from-celery")
    subscription = await broker.operations().subscribe_events()

    def dispatch() -> None:
        with celery_app.connection_for_write() as connection:
            dispatcher = celery_app.events.Dispatcher(
                connection, hostname=host, buffer_group=["task"], buffer_limit=2
            )
            dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=7)
            dispatcher.send("task-started", uuid="u1")
            dispatcher.send("task-succeeded", uuid="u1", result="3", runtime=0.5)
            dispatcher.close()

    await asyncio.to_thread(dispatch)
    received = [await next_where(subscription, "hostname", host) for _ in range(3)]
    assert [r.body["type"] for r in received] == [
        "worker-heartbeat",
        "task-started",
        "task-succeeded",
    ]
    assert received[0].body["processed"] == 7
    assert received[2].body["result"] == "3"
    assert all(r.headers["hostname"] == host for r in received)
    await subscription.close()


async def answer_pings(
    subscription: Subscription, broker: Broker, host: str, seen: list[Received]
) -> None:
    """A node's mailbox as celeriac's plane carries it: ping answered with pong."""
    async for received in subscription:
        command = received.body
        if command.get("method") != "ping" or host not in (command.get("destination") or [host]):
            continue
        seen.append(received)
        headers = {"ticket": command["ticket"], "clock": int(received.headers["clock"]) + 1}
        await broker.operations().send_reply(command["reply_to"], {host: {"ok": "pong"}}, headers)


async def test_celerys_inspect_pings_a_celeriac_node(broker: Broker, celery_app: Any) -> None:
    host = unique("node")
    inbox = await broker.operations().subscribe_commands(host)
    seen: list[Received] = []
    answering = asyncio.create_task(answer_pings(inbox, broker, host, seen))
    try:
        replies = await asyncio.to_thread(
            lambda: celery_app.control.inspect(timeout=2, destination=[host]).ping()
        )
        assert replies == {host: {"ok": "pong"}}
        (command,) = seen
        assert command.headers["expires"] == pytest.approx(time.time() + 2, abs=2)
        assert isinstance(command.headers["clock"], int)
    finally:
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        await inbox.close()


async def test_celeriac_pings_a_celery_worker(broker_url: str, broker: Broker) -> None:
    """A real ``celery worker`` answers celeriac's ping on its ``<host>.celery.pidbox``."""
    host = unique("celery")
    env = {"INTEROP_BROKER": broker_url, "INTEROP_BACKEND": "disabled://"}
    command = ["celery", "-A", "tests.apps.interop_celery", "worker", "-P", "solo", "-n", host]
    options = ["-Q", f"ops-{uuid.uuid4().hex}", "-l", "warning"]
    ops = broker.operations()
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with running([*command, *options, *quiet], env) as worker:
        oid = uuid.uuid4().hex
        replies = await ops.subscribe_replies(oid)
        deadline = time.monotonic() + 60
        reply: Received | None = None
        tickets: list[str] = []
        while reply is None and time.monotonic() < deadline:  # until the worker is up
            ticket = str(uuid.uuid4())
            tickets.append(ticket)
            ping = {
                "method": "ping",
                "arguments": {},
                "destination": [host],
                "pattern": None,
                "matcher": None,
                "ticket": ticket,
                "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
            }
            await ops.send_command(ping, {"clock": 1, "expires": time.time() + 1})
            reply = await replies.get(1.0)
        assert reply is not None, "the Celery worker never answered"
        assert reply.body == {host: {"ok": "pong"}}
        assert reply.headers["ticket"] in tickets
        assert isinstance(reply.headers["clock"], int)
        await replies.close()
        worker.kill()  # after a control command, Celery takes 10 s to honour SIGTERM
