"""Beat's storage contract (``celeriac.brokers.beat_store``), checked on every broker.

Only ``Broker.beat_store()`` and the public ``BeatStore`` API are used. Leases
lapse in real time: tests that wait for one use a ``SHORT`` ttl. Process
peers (another Python running this module, ``python -m
tests.conformance.test_beat_store``) prove that the state lives in the
broker's storage and that one clock decides for every process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers import Broker, broker_from_url
from celeriac.brokers.beat_store import BeatStore, Lease
from celeriac.protocol import Outgoing

from ..services import redis_url
from .targets import BROKERS, Target, connected
from .test_broker import make_message

TTL = 30.0
"""A lease that outlives the test."""
SHORT = 0.5
"""A lease the test waits out."""
LAPSE = SHORT + 0.15
"""Seconds to wait for a ``SHORT`` lease to lapse, with room for the servers' clocks."""
CLOCK = 0.01
"""Seconds a stored time may stray from the test's clock (Redis keeps milliseconds)."""
CONTENDERS = 10
"""Threads claiming at once."""
PEERS, ROUNDS, ROUND_GAP = 4, 10, 0.1
"""Processes claiming at once, how many times, how many seconds apart."""
ROOT = Path(__file__).resolve().parents[2]
"""The checkout, where ``python -m tests.conformance.test_beat_store`` runs."""


@pytest.fixture(params=BROKERS, ids=lambda case: case.name)
def target(request: pytest.FixtureRequest) -> Target:
    case: Target = request.param
    return case


@pytest.fixture
def broker_url(target: Target, tmp_path: Path) -> str:
    return target.make_url(tmp_path)


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    async with connected(broker_url) as broker:
        yield broker


@pytest.fixture
def store(broker: Broker) -> BeatStore:
    return broker.beat_store()


def within(value: float | None, low: float, high: float) -> None:
    """``value`` (a UNIX time the store gave) is a time the test saw between ``low``
    and ``high``, give or take ``CLOCK``."""
    assert value is not None and low - CLOCK <= value <= high + CLOCK, (value, low, high)


async def claimed(store: BeatStore, holder: str, ttl: float = TTL) -> Lease:
    lease = await store.claim(holder, ttl)
    assert lease is not None, f"{holder} did not get the lease"
    return lease


async def test_a_fresh_lease_goes_to_the_first_claim(store: BeatStore) -> None:
    assert await store.holder() is None
    before, wall_before = time.monotonic(), time.time()
    lease = await store.claim("a", TTL)
    after, wall_after = time.monotonic(), time.time()
    assert lease is not None
    assert (lease.holder, lease.token, lease.idle_since) == ("a", 1, None)
    assert before + TTL <= lease.until <= after + TTL
    held = await store.holder()
    assert held is not None
    assert held[0] == "a"
    within(held[1], wall_before + TTL, wall_after + TTL)


async def test_the_holder_renews_and_others_wait(store: BeatStore) -> None:
    first = await claimed(store, "a")
    await asyncio.sleep(0.05)
    renewed = await claimed(store, "a")
    assert (renewed.token, renewed.idle_since) == (first.token, None)
    assert renewed.until > first.until
    assert await store.claim("b", TTL) is None
    held = await store.holder()
    assert held is not None and held[0] == "a"


async def test_a_lapsed_lease_goes_to_the_next_claim_with_a_larger_token(
    store: BeatStore,
) -> None:
    before = time.time()
    first = await claimed(store, "a", SHORT)
    after = time.time()
    assert await store.claim("b", TTL) is None
    await asyncio.sleep(LAPSE)
    assert await store.holder() is None
    second = await claimed(store, "b")
    assert second.token > first.token
    within(second.idle_since, before + SHORT, after + SHORT)
    held = await store.holder()
    assert held is not None and held[0] == "b"
    assert await store.claim("a", TTL) is None


async def test_a_holder_whose_lease_lapsed_takes_it_anew(store: BeatStore) -> None:
    """Not a renewal: whatever it stored under the old token stands, but the gap shows."""
    before = time.time()
    first = await claimed(store, "a", SHORT)
    after = time.time()
    await asyncio.sleep(LAPSE)
    again = await claimed(store, "a")
    assert again.token > first.token
    within(again.idle_since, before + SHORT, after + SHORT)


async def test_release_frees_the_lease_at_once(store: BeatStore) -> None:
    lease = await claimed(store, "a")
    before = time.time()
    await store.release(lease)
    after = time.time()
    assert await store.holder() is None
    taken = await claimed(store, "b")
    assert taken.token > lease.token
    within(taken.idle_since, before, after)


async def test_a_stale_release_does_nothing(store: BeatStore) -> None:
    old = await claimed(store, "a", SHORT)
    await asyncio.sleep(LAPSE)
    current = await claimed(store, "b")
    await store.release(old)
    held = await store.holder()
    assert held is not None and held[0] == "b"
    assert await store.claim("c", TTL) is None
    assert (await claimed(store, "b")).token == current.token


async def test_runs_round_trip_exactly_and_only_move_forward(store: BeatStore) -> None:
    lease = await claimed(store, "a")
    assert await store.last_runs() == {}
    ticks = {"every-minute": 1_700_000_000.123456789, "nightly": 0.1 + 0.2, "odd": 1e-7}
    assert await store.record(lease, ticks) is True
    assert await store.last_runs() == ticks
    later = 1_700_000_060.987654321
    assert await store.record(lease, {"every-minute": later, "nightly": 0.1}) is True
    assert await store.last_runs() == {**ticks, "every-minute": later}
    for tick in (await store.last_runs()).values():
        assert type(tick) is float


async def test_a_replaced_holder_stores_nothing(store: BeatStore) -> None:
    old = await claimed(store, "a", SHORT)
    assert await store.record(old, {"x": 1.0})
    await asyncio.sleep(LAPSE)
    new = await claimed(store, "b")
    assert await store.record(old, {"x": 5.0, "y": 5.0}) is False
    assert await store.last_runs() == {"x": 1.0}
    assert await store.record(new, {"x": 2.0, "y": 2.0}) is True
    assert await store.last_runs() == {"x": 2.0, "y": 2.0}


async def test_a_lapsed_lease_not_yet_taken_still_records(store: BeatStore) -> None:
    """The fence is the token: a holder late to renew overwrites nobody's work."""
    lease = await claimed(store, "a", SHORT)
    await asyncio.sleep(LAPSE)
    assert await store.record(lease, {"x": 3.0}) is True
    assert await store.last_runs() == {"x": 3.0}


async def test_record_writes_ride_with_a_publish(broker: Broker, store: BeatStore) -> None:
    """Where the store shares the broker's storage, the ticks' messages and their record
    are one publish; fenced out, the writes store nothing (the messages still go)."""
    lease = await claimed(store, "a", SHORT)
    if not store.shares_publish:
        with pytest.raises(NotImplementedError):
            store.record_writes(lease, {"x": 1.0})
        return
    assert broker.storage is not None
    queue = f"beat-{uuid.uuid4().hex[:8]}"
    sent = make_message(1)
    await broker.publish([Outgoing(queue, sent, 0)], writes=store.record_writes(lease, {"x": 1.5}))
    assert await store.last_runs() == {"x": 1.5}
    await asyncio.sleep(LAPSE)
    await claimed(store, "b")
    late = make_message(2)
    await broker.publish([Outgoing(queue, late, 0)], writes=store.record_writes(lease, {"x": 9.0}))
    assert await store.last_runs() == {"x": 1.5}
    consumer = broker.consumer([queue], "check")
    got = await consumer.fetch(10, timeout=2.0)
    assert [d.message for d in got] == [sent, late]
    for delivery in got:
        await consumer.ack(delivery)
    await consumer.close()


async def test_the_state_outlives_the_broker_object(broker_url: str, target: Target) -> None:
    first = broker_from_url(broker_url)
    await first.connect()
    lease = await claimed(first.beat_store(), "a")
    await first.beat_store().record(lease, {"x": 0.1 + 0.2})
    await first.close()
    later = broker_from_url(broker_url)
    await later.connect()
    try:
        store = later.beat_store()
        held = await store.holder()
        assert held is not None and held[0] == "a"
        assert await store.last_runs() == {"x": 0.1 + 0.2}
        assert await store.claim("b", TTL) is None
        assert await store.record(lease, {"x": 1.0}) is True
    finally:
        await later.close()
    if target.peer == "process":
        view = await _peer(broker_url, "look")
        assert view["holder"][0] == "a"
        assert view["holder"][1] == pytest.approx(time.time() + TTL, abs=2.0)
        assert view["runs"] == {"x": 1.0}
        assert view["claim"] is None


async def test_a_store_at_another_url_is_separate(
    store: BeatStore, target: Target, tmp_path: Path
) -> None:
    await claimed(store, "a")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = broker_from_url(target.make_url(other_dir))
    await other.connect()
    try:
        lease = await claimed(other.beat_store(), "b")
        assert lease.token == 1
        assert await other.beat_store().last_runs() == {}
    finally:
        await other.close()


def test_of_many_threads_claiming_at_once_one_wins(broker_url: str) -> None:
    """Each thread has its own event loop and broker object; a barrier starts the claims."""
    barrier = threading.Barrier(CONTENDERS)
    won: list[Lease | None] = [None] * CONTENDERS
    errors: list[BaseException] = []

    async def contend(i: int) -> None:
        async with connected(broker_url) as broker:
            store = broker.beat_store()
            barrier.wait(timeout=30)
            won[i] = await store.claim(f"h{i}", TTL)

    def run(i: int) -> None:
        try:
            asyncio.run(contend(i))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    winners = [lease for lease in won if lease is not None]
    assert len(winners) == 1, winners
    assert winners[0].token == 1


async def test_of_many_processes_claiming_at_once_one_wins(
    broker_url: str, target: Target, tmp_path: Path
) -> None:
    """Each round, every peer claims a fresh store at one agreed instant (by the wall
    clock, spun on): exactly one wins each."""
    if target.peer != "process":
        pytest.skip(f"{target.name} lives in one process")
    urls = [broker_url]
    for n in range(1, ROUNDS):
        (tmp_path / f"round{n}").mkdir()
        urls.append(target.make_url(tmp_path / f"round{n}"))
    peers = [await _spawn("race", urls) for _ in range(PEERS)]
    try:
        for peer in peers:
            await _connected(peer)
        start = f"{time.time() + 0.3!r}\n".encode()
        for peer in peers:
            assert peer.stdin is not None
            peer.stdin.write(start)
        views = [await _finish(peer) for peer in peers]
    finally:
        for peer in peers:
            await _reap(peer)
    for n in range(ROUNDS):
        tokens = [view["claims"][n] for view in views if view["claims"][n] is not None]
        assert tokens == [1], (n, views)


async def test_both_redis_layouts_share_beat_keys() -> None:
    """kombu has no beat keys: both layouts use celeriac's, under the same prefix."""
    url = redis_url()
    plain, kombu = broker_from_url(url), broker_from_url(url + "&layout=kombu")
    await plain.connect()
    await kombu.connect()
    try:
        lease = await claimed(plain.beat_store(), "a")
        assert await plain.beat_store().record(lease, {"x": 4.25})
        assert await kombu.beat_store().claim("b", TTL) is None
        assert await kombu.beat_store().last_runs() == {"x": 4.25}
        assert await kombu.beat_store().record(lease, {"x": 5.5})
        assert await plain.beat_store().last_runs() == {"x": 5.5}
        assert plain.beat_store().shares_publish and not kombu.beat_store().shares_publish
    finally:
        await plain.close()
        await kombu.close()


async def _spawn(what: str, urls: list[str]) -> asyncio.subprocess.Process:
    """A peer process running :func:`_peer_main`."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.conformance.test_beat_store",
        what,
        *urls,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _connected(process: asyncio.subprocess.Process) -> None:
    """Return once the peer says it is connected; fail with its output if it died."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    if line != b"connected\n":
        out, err = await asyncio.wait_for(process.communicate(), 30)
        raise AssertionError(f"the peer failed: {(line + out + err).decode(errors='replace')}")


async def _finish(process: asyncio.subprocess.Process) -> dict[str, Any]:
    """The peer's view, printed as JSON when it ends."""
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode(errors="replace")
    view: dict[str, Any] = json.loads(out)
    return view


async def _reap(process: asyncio.subprocess.Process) -> None:
    """End a peer left waiting (a test that failed half-way), closing its pipes."""
    if process.returncode is None:
        process.kill()
        await process.communicate()


async def _peer(url: str, what: str) -> dict[str, Any]:
    process = await _spawn(what, [url])
    try:
        await _connected(process)
        return await _finish(process)
    finally:
        await _reap(process)


def _spin_until(instant: float) -> None:
    """Sleep to just before ``instant`` (UNIX time), then spin on the clock up to it."""
    time.sleep(max(instant - time.time() - 0.01, 0.0))
    while time.time() < instant:
        pass


async def _peer_main(what: str, urls: list[str]) -> dict[str, Any]:
    """``look``: what another process sees of the first store (holder, runs, and whether
    it may claim); ``race``: read a start time, then claim each store in turn, one every
    ``ROUND_GAP`` seconds from then."""
    brokers = [broker_from_url(url) for url in urls]
    try:
        for broker in brokers:
            await broker.connect()
        stores = [broker.beat_store() for broker in brokers]
        print("connected", flush=True)
        holder = f"peer-{uuid.uuid4().hex}"
        if what == "look":
            lease = await stores[0].claim(holder, TTL)
            return {
                "claim": None if lease is None else lease.token,
                "holder": await stores[0].holder(),
                "runs": await stores[0].last_runs(),
            }
        start = float(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        claims: list[int | None] = []
        for n, store in enumerate(stores):
            _spin_until(start + n * ROUND_GAP)
            lease = await store.claim(holder, TTL)
            claims.append(None if lease is None else lease.token)
        return {"claims": claims}
    finally:
        for broker in brokers:
            await broker.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_peer_main(sys.argv[1], sys.argv[2:]))))
