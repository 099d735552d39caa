"""The result-store contract, checked against every store in ``targets.STORES``."""

from __future__ import annotations

import asyncio
import builtins
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celeriac import errors, states
from celeriac.backends import BackendOptions, ResultBackend, backend_from_url
from celeriac.backends.base import ChordJoin, ResultMeta

from . import peer_store
from .peer_store import store_after
from .targets import STORES, Target

WAKE_LATENCY = 0.2
"""Longest acceptable time from a store to the waiter's return."""
WAIT_INTERVAL = 2.0
"""Passed as ``wait(interval=...)``: a store that polled would answer up to this late."""

STORE_DELAY = 0.6
"""How long after the wait begins the wake-up tests store. A store that polled
(doubling from 0.5 ms, as the base class does) would next look at about 1.02 s."""

Connect = Callable[[BackendOptions | None], Awaitable[ResultBackend]]


@pytest.fixture(params=STORES, ids=lambda case: case.name)
def case(request: pytest.FixtureRequest) -> Target:
    found: Target = request.param
    return found


@pytest.fixture
def url(case: Target, tmp_path: Path) -> str:
    return case.make_url(tmp_path)


@pytest.fixture
async def connect(url: str) -> AsyncIterator[Connect]:
    """Open backends on the test's store; each is closed after the test."""
    opened: list[ResultBackend] = []

    async def _connect(options: BackendOptions | None = None) -> ResultBackend:
        backend = backend_from_url(url, options)
        await backend.connect()
        opened.append(backend)
        return backend

    yield _connect
    for backend in opened:
        await backend.close()


@pytest.fixture
async def backend(connect: Connect) -> ResultBackend:
    return await connect(None)


def new_id() -> str:
    return str(uuid.uuid4())


def meta(task_id: str, status: str, result: Any = None) -> ResultMeta:
    return ResultMeta(task_id=task_id, status=status, result=result)


async def test_store_then_get_round_trips_every_field(backend: ResultBackend) -> None:
    done = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    stored = ResultMeta(
        task_id=new_id(),
        status=states.FAILURE,
        result={
            "exc_type": "ValueError",
            "nested": {"list": [1, 2.5, None, True, "é"]},
            "at": done,
        },
        traceback='Traceback (most recent call last):\n  File "shop.py", line 3\nValueError: no',
        children=[[["child-id", None], None]],
        date_done=done.isoformat(),
        extra={"name": "shop.charge", "args": [42, 1999], "kwargs": {"x": 1}, "retries": 2},
    )
    await backend.store(stored)

    got = await backend.get(stored.task_id)

    assert got == stored
    assert got is not None and isinstance(got.result["at"], datetime)


async def test_a_never_seen_id_is_none_not_pending(backend: ResultBackend) -> None:
    await backend.store(meta(new_id(), states.SUCCESS))

    assert await backend.get(new_id()) is None


async def test_a_later_state_overwrites_an_earlier_one(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store(meta(task_id, states.STARTED))
    await backend.store(meta(task_id, states.SUCCESS, result=3))

    assert await backend.get(task_id) == meta(task_id, states.SUCCESS, result=3)


async def test_forget_removes_the_result(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store(meta(task_id, states.SUCCESS))

    await backend.forget(task_id)
    await backend.forget(new_id())  # forgetting an unknown id is no error

    assert await backend.get(task_id) is None


@pytest.mark.parametrize("writer", ["same backend", "another backend"])
async def test_wait_returns_as_soon_as_another_task_stores(connect: Connect, writer: str) -> None:
    waiter = await connect(None)
    storer = waiter if writer == "same backend" else await connect(None)
    task_id = new_id()

    async def store_later() -> float:
        await asyncio.sleep(STORE_DELAY)
        began = time.monotonic()
        await storer.store(meta(task_id, states.SUCCESS, result=7))
        return began

    storing = asyncio.create_task(store_later())
    got = await waiter.wait(task_id, timeout=10, interval=WAIT_INTERVAL)
    latency = time.monotonic() - await storing

    assert got.result == 7
    assert latency < WAKE_LATENCY


async def test_wait_returns_as_soon_as_a_peer_stores(
    case: Target, url: str, backend: ResultBackend
) -> None:
    """The peer is another thread's event loop, or another process, as the store allows."""
    task_id = new_id()
    if case.peer == "thread":
        storing: Awaitable[float] = asyncio.to_thread(
            asyncio.run, store_after(url, task_id, STORE_DELAY)
        )
    else:
        storing = await _start_process_peer(url, task_id, STORE_DELAY)
    peer = asyncio.ensure_future(storing)

    got = await backend.wait(task_id, timeout=10, interval=WAIT_INTERVAL)
    latency = time.time() - await peer

    assert got.result == 7
    assert latency < WAKE_LATENCY


async def _start_process_peer(url: str, task_id: str, delay: float) -> Awaitable[float]:
    """Start the peer process; return, once it is connected, what awaits its store time."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        peer_store.__file__,
        url,
        task_id,
        str(delay),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"connected\n"

    async def began() -> float:
        out, _ = await process.communicate()
        assert process.returncode == 0
        return float(out)

    return began()


async def test_a_store_between_the_read_and_the_wait_is_not_slept_through(
    connect: Connect,
) -> None:
    """``wait`` reads, then waits for a change; a store landing in between must end the wait."""
    waiter, storer = await connect(None), await connect(None)
    task_id = new_id()
    assert await waiter.get(task_id) is None
    await storer.store(meta(task_id, states.SUCCESS))

    began = time.monotonic()
    await waiter._wait_changed(
        waiter.key_for(task_id), None, timeout=WAIT_INTERVAL, poll=WAIT_INTERVAL
    )

    assert time.monotonic() - began < WAKE_LATENCY


async def test_wait_sleeps_through_unready_states(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store(meta(task_id, states.PENDING))

    async def progress() -> None:
        for status in (states.STARTED, states.RETRY, states.STARTED):
            await asyncio.sleep(0.05)
            await backend.store(meta(task_id, status))
        await asyncio.sleep(0.1)
        await backend.store(meta(task_id, states.SUCCESS, result="done"))

    progressing = asyncio.create_task(progress())
    began = time.monotonic()
    got = await backend.wait(task_id, timeout=5, interval=WAIT_INTERVAL)
    await progressing

    assert got.result == "done"
    assert time.monotonic() - began >= 0.25


@pytest.mark.parametrize("stored", [None, states.STARTED])
async def test_wait_raises_timeout_error_after_the_timeout(
    backend: ResultBackend, stored: str | None
) -> None:
    task_id = new_id()
    if stored is not None:
        await backend.store(meta(task_id, stored))

    began = time.monotonic()
    with pytest.raises(errors.TimeoutError) as raised:
        await backend.wait(task_id, timeout=0.3)
    waited = time.monotonic() - began

    assert isinstance(raised.value, builtins.TimeoutError)
    assert 0.3 <= waited < 0.3 + WAKE_LATENCY


async def test_every_state_expires_unless_kept_longer(connect: Connect) -> None:
    backend = await connect(BackendOptions(expires=0.3))
    ids = {status: new_id() for status in (states.SUCCESS, states.PENDING, states.STARTED)}
    for status, task_id in ids.items():
        await backend.store(meta(task_id, status))
    kept = new_id()
    await backend.store(meta(kept, states.PENDING), keep_for=5.0)
    assert all([await backend.get(task_id) is not None for task_id in ids.values()])

    await asyncio.sleep(0.45)

    for task_id in ids.values():
        assert await backend.get(task_id) is None
    assert await backend.get(kept) == meta(kept, states.PENDING)


async def test_many_concurrent_stores_and_gets_stay_consistent(connect: Connect) -> None:
    first, second = await connect(None), await connect(None)

    async def run(i: int, task_id: str) -> ResultMeta | None:
        await first.store(meta(task_id, states.STARTED))
        assert await second.get(task_id) == meta(task_id, states.STARTED)
        await second.store(meta(task_id, states.SUCCESS, result={"i": i}))
        return await first.get(task_id)

    ids = [new_id() for _ in range(500)]
    got = await asyncio.gather(*(run(i, task_id) for i, task_id in enumerate(ids)))

    assert got == [meta(task_id, states.SUCCESS, result={"i": i}) for i, task_id in enumerate(ids)]


async def test_many_waiters_all_wake(connect: Connect) -> None:
    waiter, storer = await connect(None), await connect(None)
    ids = [new_id() for _ in range(200)]
    waits = [asyncio.create_task(waiter.wait(t, timeout=5, interval=WAIT_INTERVAL)) for t in ids]
    await asyncio.sleep(STORE_DELAY)

    await asyncio.gather(*(storer.store(meta(t, states.SUCCESS, result=t)) for t in ids))
    got = await asyncio.wait_for(asyncio.gather(*waits), WAKE_LATENCY)

    assert [m.result for m in got] == ids


async def test_mark_done_counts_distinct_members_atomically(backend: ResultBackend) -> None:
    group = new_id()
    ids = [new_id() for _ in range(60)]
    counts = await asyncio.gather(*(backend.mark_done(group, i) for i in ids + ids[:10]))
    assert max(counts) == 60
    assert sorted(counts[:60]) == list(range(1, 61)), "every count from 1 to 60 seen exactly once"
    assert await backend.mark_done(group, ids[0]) == 60, "a duplicate does not count again"
    assert await backend.mark_done(new_id(), ids[0]) == 1, "groups are separate"


async def test_claim_is_granted_once(backend: ResultBackend) -> None:
    name = new_id()
    granted = await asyncio.gather(*(backend.claim(name) for _ in range(40)))
    assert granted.count(True) == 1
    assert await backend.claim(name) is False
    assert await backend.claim(new_id()) is True


async def test_claims_and_members_expire(connect: Connect) -> None:
    backend = await connect(BackendOptions(expires=0.2))
    name, group = new_id(), new_id()
    assert await backend.claim(name)
    assert await backend.mark_done(group, "a") == 1
    await asyncio.sleep(0.3)
    assert await backend.claim(name), "an expired claim can be made again"
    assert await backend.mark_done(group, "b") == 1, "expired members no longer count"


async def header_task_ends(
    backend: ResultBackend, group_id: str, index: int, part: ResultMeta
) -> ChordJoin | None:
    """What a worker does when a chord's header task ends: store its result, return the part."""
    await backend.store(part)
    return await backend.chord_part_return(group_id, index, part)


async def send_chord(backend: ResultBackend, size: int) -> tuple[str, list[str]]:
    """What a client does before it sends a chord's header: save the group, set the size."""
    group_id, ids = new_id(), [new_id() for _ in range(size)]
    await backend.save_group(group_id, ids)
    await backend.set_chord_size(group_id, size)
    return group_id, ids


async def test_a_chord_joins_once_in_group_order_however_its_parts_arrive(
    connect: Connect,
) -> None:
    client, *workers = [await connect(None) for _ in range(3)]
    group_id, ids = await send_chord(client, 30)
    deliveries = [(i, meta(t, states.SUCCESS, result=i * 2)) for i, t in enumerate(ids)]
    deliveries += deliveries[:10]  # redelivered: each counts once
    random.shuffle(deliveries)

    joins = await asyncio.gather(
        *(header_task_ends(workers[n % 2], group_id, i, m) for n, (i, m) in enumerate(deliveries))
    )

    (join,) = [j for j in joins if j is not None]
    assert (join.values, join.error) == ([i * 2 for i in range(30)], None)
    assert await workers[0].hold_chord(join)
    await workers[0].release_chord(join)
    late = await header_task_ends(workers[1], group_id, 3, meta(ids[3], states.SUCCESS, result=6))
    assert late is None, "a duplicate after the body was sent does not complete the chord again"


async def test_a_failed_header_task_fails_the_join_once(connect: Connect) -> None:
    client, worker = await connect(None), await connect(None)
    group_id, ids = await send_chord(client, 5)
    parts = [meta(t, states.SUCCESS, result=i) for i, t in enumerate(ids)]
    parts[2] = ResultMeta.of_error(ids[2], states.FAILURE, ValueError("no stock"))

    joins = [await header_task_ends(worker, group_id, i, m) for i, m in enumerate(parts)]

    (join,) = [j for j in joins if j is not None]
    assert isinstance(join.error, errors.ChordError) and join.values == []
    assert str(join.error) == f"Dependency {ids[2]} raised ValueError('no stock')"
    await worker.release_chord(join)
    assert await header_task_ends(worker, group_id, 4, parts[4]) is None


async def test_store_many_round_trips(backend: ResultBackend) -> None:
    ids = [new_id() for _ in range(20)]
    await backend.store_many([meta(i, states.PENDING) for i in ids])
    assert [m.status if m else None for m in await backend.get_many(ids)] == [states.PENDING] * 20


async def test_a_lower_fence_never_replaces_a_higher_one(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store(meta(task_id, states.STARTED), fence=2)
    await backend.store(meta(task_id, states.FAILURE), fence=1)  # a late, lapsed attempt
    assert (await backend.get(task_id) or meta(task_id, "?")).status == states.STARTED
    await backend.store(meta(task_id, states.FAILURE), fence=2)  # the same attempt goes on
    assert (await backend.get(task_id) or meta(task_id, "?")).status == states.FAILURE
    await backend.store(meta(task_id, states.RETRY), fence=3)  # a later one
    assert (await backend.get(task_id) or meta(task_id, "?")).status == states.RETRY


async def test_a_stored_success_never_regresses(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store_pending([(task_id, None)])
    await backend.store(meta(task_id, states.SUCCESS, 42), fence=1)
    for late in (states.FAILURE, states.STARTED, states.RETRY, states.REJECTED):
        await backend.store(meta(task_id, late), fence=1 << 40)
    stored = await backend.get(task_id)
    assert stored is not None and (stored.status, stored.result) == (states.SUCCESS, 42)


async def test_an_unfenced_write_always_lands(backend: ResultBackend) -> None:
    task_id = new_id()
    await backend.store(meta(task_id, states.SUCCESS, 1), fence=5)
    await backend.store(meta(task_id, states.FAILURE))
    assert (await backend.get(task_id) or meta(task_id, "?")).status == states.FAILURE
    await backend.store(meta(task_id, states.STARTED), fence=1)  # nothing fenced stands now
    assert (await backend.get(task_id) or meta(task_id, "?")).status == states.STARTED
