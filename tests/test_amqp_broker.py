"""The RabbitMQ broker's own guarantees, against a real RabbitMQ (the contract is in conformance/).

Each test would fail without the mechanism it names. The restart test is
marked ``serial``: it stops the shared server's app and must never run at the
same time as other tests.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.amqp.broker import DELAY_PREFIX, AmqpBroker, delay_routing_key
from celeriac.amqp.wire import to_properties
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions, Consumer, Delivery
from celeriac.errors import BrokerError, BrokerUnavailable
from celeriac.testing import worker_thread

from .conformance.test_broker import numbers, out
from .services import RABBITMQ_START, rabbitmq_url

OPTIONS = BrokerOptions(lease_timeout=1.0, max_deliveries=3, poll_interval=0.02)
WEEK = 7 * 24 * 3600.0


def amqp(url: str, options: BrokerOptions = OPTIONS) -> AmqpBroker:
    broker = broker_from_url(url, options)
    assert isinstance(broker, AmqpBroker)
    return broker


@pytest.fixture
async def broker() -> AsyncIterator[AmqpBroker]:
    broker = amqp(rabbitmq_url())
    await broker.connect()
    yield broker
    await broker.close()


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def queue_info(name: str) -> dict[str, str]:
    """``rabbitmqctl list_queues`` columns of one queue."""
    columns = ["name", "durable", "arguments", "messages_ready", "messages_unacknowledged"]
    for line in rabbitmqctl("list_queues", *columns).splitlines():
        fields = line.split("\t")
        if fields[0] == name:
            return dict(zip(columns, fields, strict=True))
    raise AssertionError(f"no queue {name}")


async def settle(consumer: Consumer, deliveries: list[Delivery]) -> None:
    for d in deliveries:
        await consumer.ack(d)
    await consumer.flush_acks()


async def test_publish_returns_once_confirmed_and_a_batch_is_confirmed_at_once(
    broker: AmqpBroker,
) -> None:
    await broker.publish([out(0)])
    channel = await (await broker._publish_channel()).get_underlay_channel()
    sent: list[int] = []
    confirmed: list[int] = []
    original = channel.basic_publish

    async def watched(*args: Any, **kwargs: Any) -> Any:
        sent.append(len(confirmed))
        confirm = await original(*args, **kwargs)
        assert type(confirm).__name__ == "Ack"  # what returns is RabbitMQ's confirm
        confirmed.append(1)
        return confirm

    channel.basic_publish = watched  # type: ignore[method-assign]
    await broker.publish([out(i) for i in range(1, 200)])
    assert len(confirmed) == 199, "publish returned after every confirm"
    # Every message went out before the first confirm came back: one batch, one wait.
    assert sent == [0] * 199
    assert (await broker.stats("q")).ready == 200, "confirmed means queued"


async def test_unacked_deliveries_of_a_closed_connection_come_back(broker: AmqpBroker) -> None:
    await broker.publish([out(1)])
    worker = amqp(broker.url)
    consumer = worker.consumer(["q"], "dies")
    [held] = await consumer.fetch(1, timeout=5)
    other = broker.consumer(["q"], "other")
    assert await other.fetch(1, timeout=0.5) == [], "a held delivery is nobody else's"
    await worker.close()  # the process died: its connection is gone
    [again] = await other.fetch(1, timeout=5)
    assert again.message == held.message
    assert again.delivery_count == 2, "redelivered counts as a second delivery"
    await settle(other, [again])
    await other.close()


async def test_prefetch_takes_exactly_the_limit(broker: AmqpBroker) -> None:
    await broker.publish([out(i) for i in range(10)])
    consumer = broker.consumer(["q"], "c")
    got: list[Delivery] = []
    while len(got) < 3:  # under load a burst may land over two fetches
        got += await consumer.fetch(3 - len(got), timeout=5)
    assert len(got) == 3
    stats = await broker.stats("q")
    assert (stats.ready, stats.reserved) == (7, 3), "RabbitMQ sent no more than asked"
    await settle(consumer, got)
    await consumer.close()


async def test_queues_are_durable_with_priorities_and_messages_persistent(
    broker: AmqpBroker,
) -> None:
    await broker.publish([out(1, priority=7)])
    info = await asyncio.to_thread(queue_info, broker.name("q"))
    assert info["durable"] == "true"
    assert '"x-max-priority",10' in info["arguments"]
    consumer = broker.consumer(["q"], "c")
    [d] = await consumer.fetch(1, timeout=5)
    assert d.tag.delivery_mode == 2 and d.tag.priority == 7
    await settle(consumer, [d])
    await consumer.close()


async def test_the_celery_queue_is_declared_as_celery_declares_it(broker: AmqpBroker) -> None:
    await broker.publish([out(1, queue="celery")])
    info = await asyncio.to_thread(queue_info, broker.name("celery"))
    assert (info["durable"], info["arguments"]) == ("true", "[]")
    exchanges = await asyncio.to_thread(rabbitmqctl, "list_exchanges", "name", "type", "durable")
    assert f"{broker.name('celery')}\tdirect\ttrue" in exchanges.splitlines()
    bindings = await asyncio.to_thread(
        rabbitmqctl, "list_bindings", "source_name", "destination_name", "routing_key"
    )
    assert f"{broker.name('celery')}\t{broker.name('celery')}\tcelery" in bindings.splitlines()


async def test_quorum_queues_count_deliveries_and_dead_letter() -> None:
    options = BrokerOptions(lease_timeout=0.3, max_deliveries=2)
    broker = amqp(rabbitmq_url(query="queue_type=quorum"), options)
    await broker.connect()
    sent = out(1)
    await broker.publish([sent])
    info = await asyncio.to_thread(queue_info, broker.name("q"))
    assert '"x-queue-type","quorum"' in info["arguments"]
    assert '"x-delivery-limit",2' in info["arguments"]
    for attempt in (1, 2):
        crashing = broker.consumer(["q"], f"crash-{attempt}")
        [d] = await crashing.fetch(1, timeout=5)
        assert d.delivery_count == attempt  # from RabbitMQ's x-delivery-count
        crashing.abandon()
    last = broker.consumer(["q"], "last")
    assert await last.fetch(1, timeout=3) == []
    [letter] = await broker.dead_letters("q")
    assert (letter.message, letter.delivery_count) == (sent.message, 3)
    await last.close()
    await broker.close()


async def test_broker_transport_options_choose_quorum_queues() -> None:
    options = BrokerOptions(max_deliveries=4, transport_options={"queue_type": "quorum"})
    broker = amqp(rabbitmq_url(), options)
    await broker.connect()
    await broker.publish([out(1)])
    info = await asyncio.to_thread(queue_info, broker.name("q"))
    assert '"x-queue-type","quorum"' in info["arguments"]
    assert '"x-delivery-limit",4' in info["arguments"]
    await broker.close()


async def test_a_short_delay_is_never_early_and_arrives(broker: AmqpBroker) -> None:
    consumer = broker.consumer(["q"], "c")
    sent_at = time.time()
    await broker.publish([out(1, delay=1.5)])
    [d] = await consumer.fetch(1, timeout=15)
    assert time.time() >= sent_at + 1.5, "not early"
    assert numbers([d]) == [1]
    await settle(consumer, [d])
    await consumer.close()


async def test_a_week_long_delay_waits_in_a_delay_queue_not_in_a_worker(
    broker: AmqpBroker,
) -> None:
    await broker.publish([out(1, delay=WEEK)])
    consumer = broker.consumer(["q"], "c")
    assert await consumer.fetch(1, timeout=0.5) == []
    assert consumer.held == 0
    stats = await broker.stats("q")
    assert (stats.ready, stats.delayed, stats.reserved) == (0, 1, 0)
    # 604,800,000 ms: its highest bit is 2**29, so it waits on rung 29 first.
    assert delay_routing_key(int(WEEK * 1000), "q").split(".")[2] == "1"
    info = await asyncio.to_thread(queue_info, broker.name(f"{DELAY_PREFIX}q.29"))
    assert (info["messages_ready"], info["messages_unacknowledged"]) == ("1", "0")
    await consumer.close()


async def test_a_message_that_arrives_early_goes_round_again(broker: AmqpBroker) -> None:
    """The ladder's range ends at 2**32 ms; the not-before header guards it and any clock."""
    await broker.declare("q")
    consumer = broker.consumer(["q"], "c")
    message = out(1)
    properties = to_properties(message.message, 0, 1, time.time() + 1.0)
    await broker.send([("", broker.name("q"), message.message.body, properties)])  # no ladder
    assert await consumer.fetch(1, timeout=0.5) == []
    assert (await broker.stats("q")).delayed == 1
    [d] = await consumer.fetch(1, timeout=10)
    assert d.message == message.message
    await settle(consumer, [d])
    await consumer.close()


@pytest.mark.serial
async def test_broker_restart_consumers_reconnect_and_nothing_acked_is_lost() -> None:
    url = rabbitmq_url()
    broker = amqp(url)
    await broker.connect()
    await broker.publish([out(i) for i in range(20)])
    consumer = broker.consumer(["q"], "c")
    first = await consumer.fetch(6, timeout=5)
    await settle(consumer, first[:5])  # acked: must never come back
    acked = set(numbers(first[:5]))
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        with pytest.raises(BrokerUnavailable) as raised:
            await broker.publish([out(99)])
        text = str(raised.value)
        assert "amqp://guest:***@127.0.0.1:5672" in text and "guest:guest" not in text
        assert "rabbitmq-server" in text
        with pytest.raises(BrokerError):
            await consumer.fetch(1, timeout=1)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while len(seen) < 15 and time.monotonic() < deadline:
        try:
            got = await consumer.fetch(10, timeout=1)
        except BrokerError:
            await asyncio.sleep(0.5)  # the worker loop backs off the same way
            continue
        seen.extend(numbers(got))
        await settle(consumer, got)
    assert sorted(seen) == sorted(set(range(20)) - acked)
    await broker.publish([out(100)])  # publishers work again
    assert numbers(await consumer.fetch(1, timeout=5)) == [100]
    await consumer.close()
    await broker.close()


async def test_unreachable_broker_names_the_url_without_password() -> None:
    rabbitmq_url()  # skips without RabbitMQ, like the rest of the module
    broker = amqp("amqp://guest:s3cret@127.0.0.1:1//")
    with pytest.raises(BrokerUnavailable) as raised:
        await broker.connect()
    assert "s3cret" not in str(raised.value)
    assert "amqp://guest:***@127.0.0.1:1//" in str(raised.value)
    assert RABBITMQ_START.split()[0] in str(raised.value)


@pytest.mark.serial
def test_a_worker_goes_on_after_a_broker_restart() -> None:
    """The consume loop backs off on BrokerError and the consumer reconnects by itself."""
    app = Celeriac("restart", broker=rabbitmq_url(), backend="memory://amqp-restart")

    @app.task
    def double(n: int) -> int:
        return 2 * n

    with worker_thread(app, concurrency=2):
        assert [double.delay(i).get(timeout=30) for i in range(3)] == [0, 2, 4]
        try:
            rabbitmqctl("stop_app")
            time.sleep(1)  # the worker's fetch fails meanwhile
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        deadline = time.monotonic() + 60
        while True:  # publishers fail fast until RabbitMQ listens again
            try:
                result = double.delay(21)
                break
            except BrokerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert result.get(timeout=60) == 42
    app.close()
