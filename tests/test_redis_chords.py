"""Chords on the Redis result store, in Celery's keys, checked with Celery's own store code.

Each test is one chord that Celery's ``RedisBackend`` and celeriac's share: the
size set by one side, header parts recorded by either, and completion seen
by whichever records the last part, as in a mixed fleet.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultMeta
from celeriac.errors import ChordError
from celeriac.redis import store
from celeriac.redis.store import RedisBackend

from .services import redis_url

celery = pytest.importorskip("celery")
from celery.app.task import Context  # noqa: E402 - only with Celery installed


@pytest.fixture
def url() -> str:
    return redis_url()


@pytest.fixture
def prefix(url: str) -> str:
    return url.partition("prefix=")[2]


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisBackend]:
    made = backend_from_url(url)
    assert isinstance(made, RedisBackend)
    await made.connect()
    yield made
    await made.close()


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url(prefixed=False))
    yield client
    await client.aclose()


@pytest.fixture
def peer(url: str, prefix: str) -> Iterator[Any]:
    """Celery's Redis store on the same keys (its ``global_keyprefix`` = our prefix),
    sending chord bodies to an in-memory broker the test reads."""
    app = celery.Celery("peer", broker="memory://", backend=url.partition("?")[0])
    app.conf.update(
        result_backend_transport_options={"global_keyprefix": prefix},
        result_serializer="json",
        accept_content=["json"],
    )
    yield app
    app.close()


def body(peer: Any) -> dict[str, Any]:
    return dict(peer.signature("interop.tsum", options={"task_id": str(uuid.uuid4())}))


def part(task_id: str, value: Any) -> ResultMeta:
    return ResultMeta(task_id, states.SUCCESS, value)


async def celery_part_returns(
    peer: Any, group_id: str, index: int, task_id: str, chord: dict[str, Any], result: Any
) -> None:
    """What Celery's worker does when a header task ends (``mark_as_done``/``mark_as_failure``)."""
    request = Context(id=task_id, group=group_id, group_index=index, chord=chord)
    state = states.FAILURE if isinstance(result, Exception) else states.SUCCESS
    await asyncio.to_thread(peer.backend.on_chord_part_return, request, state, result)


def sent_bodies(peer: Any) -> list[Any]:
    """The bodies Celery's store sent (as Celery's worker would), by their args."""
    with peer.connection_for_write() as conn:
        queue = conn.SimpleQueue("celery")
        got = []
        while queue.qsize():
            message = queue.get(timeout=1)
            got.append(message.payload[0])
            message.ack()
        queue.close()
    return got


async def chord_keys(raw: aioredis.Redis, prefix: str, group_id: str) -> dict[str, Any]:
    base = f"{prefix}celery-taskset-meta-{group_id}"
    return {s: await raw.exists(f"{base}.{s}") for s in "sjdt"} | {"c": await raw.get(f"{base}.c")}


async def test_celeriac_sets_the_size_as_celerys_client_does(
    backend: RedisBackend, raw: aioredis.Redis, prefix: str
) -> None:
    group_id = str(uuid.uuid4())
    key = f"{prefix}celery-taskset-meta-{group_id}"
    await raw.set(f"{key}.c", "done")  # a finished earlier run of the same frozen chord

    await backend.set_chord_size(group_id, 3)

    assert await raw.get(f"{key}.s") == b"3"
    assert 86_000 < await raw.ttl(f"{key}.s") <= 86_400, "result_expires, as Celery's"
    assert await raw.exists(f"{key}.c") == 0, "re-sending a frozen chord is a new run"
    await raw.delete(f"{key}.s")


async def test_celery_completes_a_chord_celeriac_sized_and_began(
    backend: RedisBackend, peer: Any, raw: aioredis.Redis, prefix: str
) -> None:
    group_id, ids, chord = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)], body(peer)
    await backend.set_chord_size(group_id, 3)
    assert await backend.chord_part_return(group_id, 2, part(ids[2], 20)) is None
    assert await backend.chord_part_return(group_id, 0, part(ids[0], 0)) is None
    assert await backend.chord_part_return(group_id, 0, part(ids[0], 0)) is None, "a duplicate"

    await celery_part_returns(peer, group_id, 1, ids[1], chord, 10)

    assert sent_bodies(peer) == [[[0, 10, 20]]], "in group order, each part once"
    assert await chord_keys(raw, prefix, group_id) == {"s": 0, "j": 0, "d": 0, "t": 0, "c": b"done"}
    assert await backend.chord_part_return(group_id, 1, part(ids[1], 10)) is None, "a late copy"


async def test_celeriac_completes_a_chord_celery_sized_and_began(
    backend: RedisBackend, peer: Any, raw: aioredis.Redis, prefix: str
) -> None:
    group_id, ids, chord = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(3)], body(peer)
    await asyncio.to_thread(peer.backend.set_chord_size, group_id, 3)
    await celery_part_returns(peer, group_id, 1, ids[1], chord, "b")
    await celery_part_returns(peer, group_id, 0, ids[0], chord, "a")

    join = await backend.chord_part_return(group_id, 2, part(ids[2], "c"))

    assert join is not None and (join.values, join.error) == (["a", "b", "c"], None)
    assert sent_bodies(peer) == [], "Celery's parts did not complete it"
    assert await backend.hold_chord(join)
    await backend.release_chord(join)
    assert await chord_keys(raw, prefix, group_id) == {"s": 0, "j": 0, "d": 0, "t": 0, "c": b"done"}
    await celery_part_returns(peer, group_id, 2, ids[2], chord, "c")
    assert sent_bodies(peer) == [], "Celery's late copy is ignored too"


async def test_a_failure_celery_recorded_fails_celeriacs_join(
    backend: RedisBackend, peer: Any, raw: aioredis.Redis, prefix: str
) -> None:
    group_id, ids, chord = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(2)], body(peer)
    await backend.set_chord_size(group_id, 2)
    await celery_part_returns(peer, group_id, 0, ids[0], chord, KeyError("sku-9"))

    join = await backend.chord_part_return(group_id, 1, part(ids[1], 1))

    assert join is not None and isinstance(join.error, ChordError)
    assert str(join.error) == f"Dependency {ids[0]} raised KeyError('sku-9')"
    await backend.release_chord(join)
    assert (await chord_keys(raw, prefix, group_id))["s"] == 0, "Celery's rule: the size goes"


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
async def test_a_failure_celeriac_recorded_fails_the_body_celery_completes(
    backend: RedisBackend, peer: Any
) -> None:
    group_id, ids, chord = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(2)], body(peer)
    await backend.set_chord_size(group_id, 2)
    failed = ResultMeta.of_error(ids[0], states.FAILURE, ValueError("out of stock"))
    assert await backend.chord_part_return(group_id, 0, failed) is None

    await celery_part_returns(peer, group_id, 1, ids[1], chord, 1)

    result = peer.AsyncResult(chord["options"]["task_id"])
    assert result.state == states.FAILURE
    assert str(result.result) == f"Dependency {ids[0]} raised ValueError('out of stock')"
    assert sent_bodies(peer) == []


async def test_concurrent_copies_of_the_last_part_join_once(url: str) -> None:
    workers = [backend_from_url(url) for _ in range(4)]
    for worker in workers:
        await worker.connect()
    group_id, ids = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(40)]
    await workers[0].set_chord_size(group_id, 40)
    deliveries = [(i, part(t, i)) for i, t in enumerate(ids)] * 2

    joins = await asyncio.gather(
        *(workers[n % 4].chord_part_return(group_id, i, p) for n, (i, p) in enumerate(deliveries))
    )

    (join,) = [j for j in joins if j is not None]
    assert join.values == list(range(40))
    for worker in workers:
        await worker.close()


async def test_a_chord_whose_claimant_died_is_taken_over_after_its_lease(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "CLAIM_SECONDS", 1)
    group_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    await backend.set_chord_size(group_id, 1)
    first = await backend.chord_part_return(group_id, 0, part(task_id, 1))
    assert first is not None  # ... and its worker dies before sending the body
    assert await backend.chord_part_return(group_id, 0, part(task_id, 1)) is None, "still held"

    await asyncio.sleep(1.2)  # the lease lapses
    again = await backend.chord_part_return(group_id, 0, part(task_id, 1))

    assert again is not None and again.values == [1], "the redelivered task takes it over"
    assert not await backend.hold_chord(first), "the dead worker's hold is gone"
    assert await backend.hold_chord(again)
    await backend.release_chord(again)
