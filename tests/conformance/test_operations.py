"""The operations plane's contract (``celeriac.brokers.operations``) on every broker.

Events, mailbox commands and replies reach whoever listens when they are
sent, and nobody else; revokes outlive the process that stored them. Tests
that share a server with others (RabbitMQ's exchanges are Celery's fixed
names) tell their own messages apart by a hostname or ticket of their own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from celeriac.brokers import Broker, broker_from_url
from celeriac.brokers.operations import REPLY_EXCHANGE, Received, Subscription

from .targets import BROKERS, Target, connected

WAIT = 5.0


@pytest.fixture(params=BROKERS, ids=lambda case: case.name)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    case: Target = request.param
    return case.make_url(tmp_path)


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    async with connected(broker_url) as broker:
        yield broker


async def mine(subscription: Subscription, key: str, value: str, count: int) -> list[Received]:
    """The next ``count`` messages whose body has ``key == value`` (others are skipped)."""
    found: list[Received] = []
    deadline = time.monotonic() + WAIT
    while len(found) < count:
        left = deadline - time.monotonic()
        received = await subscription.get(max(left, 0.0)) if left > 0 else None
        if received is None:
            raise AssertionError(f"got {len(found)} of {count} messages with {key}={value}")
        if received.body.get(key) == value:
            found.append(received)
    return found


async def nothing_more(subscription: Subscription, key: str, value: str) -> None:
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        received = await subscription.get(left)
        assert received is None or received.body.get(key) != value, received


def event(host: str, kind: str, n: int) -> dict[str, object]:
    return {
        "type": kind,
        "hostname": host,
        "timestamp": time.time(),
        "utcoffset": 0,
        "pid": 1,
        "clock": n,
        "uuid": str(uuid.uuid4()),
        "n": n,
    }


async def test_every_listener_gets_every_event_in_order(broker: Broker) -> None:
    host = f"events-{uuid.uuid4().hex}@test"
    ops = broker.operations()
    first, second = await ops.subscribe_events(), await ops.subscribe_events()
    sent = [event(host, kind, n) for n, kind in enumerate(["task-sent", "task-succeeded"] * 3)]
    await ops.send_events(sent)
    for subscription in (first, second):
        got = await mine(subscription, "hostname", host, len(sent))
        assert [r.body for r in got] == sent
        await subscription.close()


async def test_events_sent_before_listening_are_not_kept(broker: Broker) -> None:
    host = f"early-{uuid.uuid4().hex}@test"
    ops = broker.operations()
    await ops.send_events([event(host, "worker-heartbeat", 0)])
    async with await ops.subscribe_events() as late:
        await ops.send_events([event(host, "worker-heartbeat", 1)])
        got = await mine(late, "hostname", host, 1)
        assert got[0].body["n"] == 1
        await nothing_more(late, "hostname", host)


async def test_a_closed_subscription_gets_nothing(broker: Broker) -> None:
    host = f"closed-{uuid.uuid4().hex}@test"
    ops = broker.operations()
    subscription = await ops.subscribe_events()
    await subscription.close()
    await ops.send_events([event(host, "task-sent", 0)])
    assert await subscription.get(0.3) is None


async def test_a_command_reaches_every_node_and_replies_reach_the_sender(
    broker_url: str, broker: Broker
) -> None:
    """Two workers (each its own broker connection) hear one command; each answers
    the sender, who hears only the replies to its own address."""
    ticket, oid = str(uuid.uuid4()), uuid.uuid4().hex
    command = {
        "method": "ping",
        "arguments": {},
        "destination": None,
        "pattern": None,
        "matcher": None,
        "ticket": ticket,
        "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
    }
    workers = [broker_from_url(broker_url) for _ in range(2)]
    for worker in workers:
        await worker.connect()
    try:
        names = [f"w{i}-{uuid.uuid4().hex}@test" for i in range(2)]
        inboxes = [
            await w.operations().subscribe_commands(name)
            for w, name in zip(workers, names, strict=True)
        ]
        replies = await broker.operations().subscribe_replies(oid)
        other = await broker.operations().subscribe_replies(uuid.uuid4().hex)
        headers = {"clock": 1, "expires": time.time() + 10}
        await broker.operations().send_command(command, headers)
        for worker, name, inbox in zip(workers, names, inboxes, strict=True):
            received = (await mine(inbox, "ticket", ticket, 1))[0]
            assert received.body["method"] == "ping"
            assert received.headers["expires"] == pytest.approx(headers["expires"])
            await worker.operations().send_reply(
                received.body["reply_to"], {name: {"ok": "pong"}}, {"ticket": ticket, "clock": 2}
            )
        got: dict[str, object] = {}
        while len(got) < 2:
            reply = await replies.get(WAIT)
            assert reply is not None, f"replies so far: {got}"
            assert reply.headers["ticket"] == ticket
            got.update(reply.body)
        assert got == {name: {"ok": "pong"} for name in names}
        assert await other.get(0.3) is None
        for subscription in (*inboxes, replies, other):
            await subscription.close()
    finally:
        for worker in workers:
            await worker.close()


async def test_revokes_outlive_the_connection_that_stored_them(broker_url: str) -> None:
    first = broker_from_url(broker_url)
    await first.connect()
    now = time.time()
    kept, lapsed = str(uuid.uuid4()), str(uuid.uuid4())
    await first.operations().store_revoked({kept: now + 60, lapsed: now + 0.2})
    await first.operations().store_revoked({kept: now + 30})  # the later until stays
    await first.close()
    await asyncio.sleep(0.3)
    later = broker_from_url(broker_url)
    await later.connect()
    try:
        revoked = await later.operations().revoked()
        assert revoked[kept] == pytest.approx(now + 60, abs=1e-3)
        assert lapsed not in revoked
    finally:
        await later.close()
