"""The Redis broker's own guarantees, against a real Redis (the contract is in conformance/).

Each test would fail without the mechanism it names. Tests that stop the
server are marked ``serial``: they must never share the server with a test
running at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from celeriac import Celeriac
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions, QueueStats
from celeriac.errors import BrokerError, BrokerUnavailable, ConfigurationError
from celeriac.redis.broker import RedisBroker
from celeriac.redis.connection import open_pool
from celeriac.redis.url import split_prefix
from celeriac.testing import worker_thread

from .conformance.test_broker import numbers, out
from .services import REDIS_START, redis_url

LEASE = 1.0
OPTIONS = BrokerOptions(lease_timeout=LEASE, max_deliveries=3, poll_interval=0.02)


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
async def broker(url: str) -> AsyncIterator[RedisBroker]:
    broker = broker_from_url(url, OPTIONS)
    assert isinstance(broker, RedisBroker)
    await broker.connect()
    yield broker
    await broker.close()


def key(broker: RedisBroker, name: str) -> str:
    return broker._keys.prefix + name


async def test_priority_nine_overtakes_ten_thousand_zeros(broker: RedisBroker) -> None:
    await broker.publish([out(i) for i in range(10_000)])
    await broker.publish([out(-1, priority=9)])
    consumer = broker.consumer(["q"], "c")
    [first] = await consumer.fetch(1, timeout=1)
    assert numbers([first]) == [-1]
    await consumer.close()


async def test_acks_delete_entries_in_one_round_trip(
    broker: RedisBroker, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await broker.publish([out(i) for i in range(200)])
    consumer = broker.consumer(["q"], "c")
    deliveries = await consumer.fetch(200, timeout=1)
    assert len(deliveries) == 200
    sends: list[object] = []
    original = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    for d in deliveries:
        await consumer.ack(d)
    await consumer.flush_acks()
    monkeypatch.undo()
    assert len(sends) == 1, "200 acks, one round trip"
    assert await raw.xlen(key(broker, "queue:q:0")) == 0, "acked entries are deleted"
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await consumer.close()


async def test_a_live_consumer_keeps_its_delivery_past_every_timeout(broker: RedisBroker) -> None:
    """Held 5x the lease, heartbeats running; a fetcher busy all along gets nothing."""
    await broker.publish([out(1)])
    busy = broker.consumer(["q"], "busy")
    [held] = await busy.fetch(1, timeout=1)
    other = broker.consumer(["q"], "other")
    started = time.monotonic()
    while time.monotonic() - started < 5 * LEASE:
        assert await other.fetch(1, timeout=0.5) == []
    assert busy.heartbeat_error is None and time.time() - busy.last_heartbeat < LEASE
    assert (await broker.stats("q")).reserved == 1
    await busy.ack(held)
    await busy.flush_acks()
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await busy.close()
    await other.close()


_HOLDER = """
import asyncio, sys
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions

async def main():
    broker = broker_from_url(sys.argv[1], BrokerOptions(lease_timeout=float(sys.argv[2])))
    await broker.connect()
    consumer = broker.consumer(["q"], "doomed")
    [delivery] = await consumer.fetch(1, timeout=5)
    print(delivery.delivery_count, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_sigkilled_consumers_delivery_is_claimed_soon_after_its_lease(
    url: str, broker: RedisBroker
) -> None:
    await broker.publish([out(7)])
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, url, str(LEASE), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"1"
        holder.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = broker.consumer(["q"], "survivor")
        [again] = await survivor.fetch(1, timeout=LEASE + 3)
        took = time.monotonic() - killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()
    assert numbers([again]) == [7]
    assert again.delivery_count == 2
    assert took < LEASE + 1.5, f"claimed {took:.2f}s after the kill"
    await survivor.ack(again)
    await survivor.close()


async def test_delayed_messages_wait_in_the_sorted_set(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    week = 7 * 86400
    await broker.publish([out(1, delay=week), out(2, delay=0.3)])
    delayed, stream = key(broker, "delayed:q"), key(broker, "queue:q:0")
    assert await raw.zcard(delayed) == 2
    assert await raw.xlen(stream) == 0
    consumer = broker.consumer(["q"], "c")
    [due] = await consumer.fetch(10, timeout=2)
    assert numbers([due]) == [2]
    assert await raw.zcard(delayed) == 1, "the week-long one is still in Redis, not in a worker"
    assert await consumer.fetch(10, timeout=0.3) == []
    assert consumer.held == 1
    assert await broker.stats("q") == QueueStats(ready=0, delayed=1, reserved=1)
    await consumer.close()


async def test_dead_letters_keep_the_reason_in_their_stream(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await broker.publish([out(1)])
    consumer = broker.consumer(["q"], "c")
    [delivery] = await consumer.fetch(1, timeout=1)
    await consumer.dead_letter(delivery, "no such task")
    entries: Any = await raw.xrange(key(broker, "dead"))
    [(_, fields)] = entries
    assert (fields[b"q"], fields[b"r"], fields[b"c"]) == (b"q", b"no such task", b"1")
    assert await raw.xlen(key(broker, "queue:q:0")) == 0
    [letter] = await broker.dead_letters("q")
    assert letter.message == delivery.message
    await consumer.close()


async def test_a_prefix_keeps_apps_apart_and_every_key_carries_it(raw: aioredis.Redis) -> None:
    one, two = redis_url(), redis_url()
    brokers = [broker_from_url(u, OPTIONS) for u in (one, two)]
    for b in brokers:
        await b.connect()
    await brokers[0].publish([out(1), out(2, delay=60)])
    await brokers[1].publish([out(3)])
    consumers = [b.consumer(["q"], "c") for b in brokers]
    assert numbers(await consumers[0].fetch(10, timeout=1)) == [1]
    assert numbers(await consumers[1].fetch(10, timeout=1)) == [3]
    for u in (one, two):
        prefix = split_prefix(u)[1]
        keys = [k.decode() async for k in raw.scan_iter(match=f"{prefix}*")]
        assert f"{prefix}celeriac:queue:q:0" in keys
        assert all(k.startswith(prefix + "celeriac:") for k in keys)
    for c, b in zip(consumers, brokers, strict=True):
        await c.close()
        await b.close()


def test_tls_url_options_reach_redis_py() -> None:
    pool, prefix = open_pool(
        "rediss://user:secret@cache.example:6380/3?ssl_cert_reqs=CERT_NONE"
        "&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false&prefix=shop:"
    )
    from redis.asyncio.connection import SSLConnection

    assert issubclass(pool.connection_class, SSLConnection)
    kwargs: dict[str, Any] = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.example", 6380, 3)
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"]) == ("none", "/etc/ca.pem")
    assert kwargs["ssl_check_hostname"] is False
    assert prefix == "shop:"
    broker = broker_from_url("rediss://:secret@cache.example:6380/0")
    assert isinstance(broker, RedisBroker)
    assert "secret" not in repr(broker)


def test_a_missing_driver_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "redis" or name.startswith(("redis.", "celeriac.redis.broker")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'celeriac\[redis\]'"):
        broker_from_url("redis://127.0.0.1:6379/0")


async def test_an_unreachable_server_is_named_without_its_password() -> None:
    broker = broker_from_url("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(BrokerUnavailable) as raised:
        await broker.connect()
    message = str(raised.value)
    assert "redis://:***@127.0.0.1:1/0" in message and "hunter2" not in message
    assert "redis-server" in message
    with pytest.raises(BrokerUnavailable):
        await broker.publish([out(1)])
    await broker.close()


# -- a real restart of the server -------------------------------------------------


def _client() -> redis.Redis:
    """A client that never retries (redis-py's default would retry for seconds)."""
    return redis.Redis(socket_connect_timeout=0.2, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))


def _ping() -> bool:
    client = _client()
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start_redis() -> None:
    subprocess.run(REDIS_START, shell=True, check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while not _ping():
        assert time.monotonic() < deadline, "redis-server did not come back"
        time.sleep(0.05)


@contextlib.contextmanager
def redis_restored() -> Iterator[None]:
    """Whatever happens inside, Redis is up again afterwards."""
    try:
        yield
    finally:
        if not _ping():
            _start_redis()


def _stop_redis() -> None:
    client = _client()
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    client.close()
    deadline = time.monotonic() + 10
    while _ping():
        assert time.monotonic() < deadline, "redis-server did not stop"
        time.sleep(0.05)


@pytest.mark.serial
async def test_publish_fails_fast_and_a_consumer_goes_on_after_a_restart(
    broker: RedisBroker,
) -> None:
    consumer = broker.consumer(["q"], "c")
    await broker.publish([out(1)])
    [before] = await consumer.fetch(1, timeout=1)
    await consumer.ack(before)
    await consumer.flush_acks()
    with redis_restored():
        await asyncio.to_thread(_stop_redis)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="cannot reach the Redis broker"):
            await broker.publish([out(2)])
        assert time.monotonic() - started < 1.0, "publishers fail fast"
        with pytest.raises(BrokerError):
            await consumer.fetch(1, timeout=0.2)
        await asyncio.to_thread(_start_redis)
    await broker.publish([out(3)])
    [after] = await consumer.fetch(1, timeout=2)
    assert numbers([after]) == [3]
    await consumer.ack(after)
    await consumer.flush_acks()
    assert await broker.stats("q") == QueueStats(0, 0, 0)
    await consumer.close()


@pytest.mark.serial
def test_a_worker_rides_out_a_restart() -> None:
    url = redis_url()
    app = Celeriac(
        "restart",
        broker_url=url,
        result_backend=url,
        broker_lease_timeout=LEASE,
        result_store_pending=False,  # so the send below meets the broker, not the store
    )

    @app.task
    def double(x: int) -> int:
        return 2 * x

    with worker_thread(app, concurrency=2):
        assert double.delay(1).get(timeout=5) == 2
        with redis_restored():
            _stop_redis()
            with pytest.raises(BrokerUnavailable):
                double.delay(2)
            time.sleep(0.5)  # the worker's fetches fail meanwhile; it backs off
            _start_redis()
        assert double.delay(21).get(timeout=10) == 42


def test_global_keyprefix_from_transport_options() -> None:
    from celeriac import Celeriac

    app = Celeriac(
        "prefixed",
        broker=redis_url(prefixed=False),
        broker_transport_options={"global_keyprefix": "shop1:"},
        set_as_current=False,
    )

    async def keys() -> str:
        broker = await app.abroker()
        return broker._keys.prefix  # type: ignore[attr-defined, no-any-return]

    from celeriac._sync import run_sync

    assert run_sync(keys).startswith("shop1:")
    app.close()


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    """Connections pack with hiredis; the bytes must equal redis-py's own packing."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    pool, _ = open_pool("redis://127.0.0.1:6379/0")
    fast, plain = pool.connection_class(), Connection()
    for command in [
        ("SET", "k", b"\x00v", "NX", "PX", 600_000),
        ("CLIENT SETNAME", "n"),
        (b"ZADD", "z", 1.5, "m", -3, "é"),
        ("XADD", "s", "*", "h", memoryview(b"head"), "b", bytearray(b"[]")),
    ]:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    with pytest.raises(DataError):
        fast.pack_command("SET", "k", None)  # type: ignore[arg-type]
