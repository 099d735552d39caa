"""The Redis result store's own guarantees, against a real Redis (the contract is in conformance/).

Celery's layout is checked with Celery itself: its Redis backend reads what we
store, and we read what it stores.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from celeriac import states
from celeriac.backends import BackendOptions, backend_from_url
from celeriac.backends.base import ResultMeta
from celeriac.errors import BackendError
from celeriac.redis.store import RedisBackend

from .services import redis_url


@pytest.fixture
def url() -> str:
    return redis_url(prefixed=False)


@pytest.fixture
async def backend(url: str) -> AsyncIterator[RedisBackend]:
    backend = backend_from_url(url)
    assert isinstance(backend, RedisBackend)
    await backend.connect()
    yield backend
    await backend.close()


@pytest.fixture
def celery_app(url: str) -> Iterator[object]:
    celery = pytest.importorskip("celery")
    app = celery.Celery("peer", broker="memory://", backend=url, set_as_current=False)
    app.conf.result_expires = 60
    yield app
    app.close()


async def test_celery_reads_what_we_store(backend: RedisBackend, celery_app: object) -> None:
    task_id = str(uuid.uuid4())
    await backend.store(ResultMeta(task_id, states.SUCCESS, result={"total": [1, 2.5, "x"]}))

    got = await asyncio.to_thread(lambda: celery_app.AsyncResult(task_id).get(timeout=5))  # type: ignore[attr-defined]

    assert got == {"total": [1, 2.5, "x"]}


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
async def test_we_read_what_celery_stores(backend: RedisBackend, celery_app: object) -> None:
    task_id = str(uuid.uuid4())
    waiting = asyncio.create_task(backend.wait(task_id, timeout=5))
    await asyncio.sleep(0.2)

    def celery_stores() -> None:
        celery_app.backend.store_result(task_id, {"ok": True}, states.SUCCESS)  # type: ignore[attr-defined]

    await asyncio.to_thread(celery_stores)
    meta = await asyncio.wait_for(waiting, 1)

    assert (meta.status, meta.result, meta.task_id) == (states.SUCCESS, {"ok": True}, task_id)


async def test_a_store_is_set_with_expiry_and_published_on_its_key(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    key = f"celery-task-meta-{task_id}"
    pubsub = raw.pubsub()
    await pubsub.subscribe(key)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    await backend.store(ResultMeta(task_id, states.SUCCESS, result=3))

    message = await pubsub.get_message(timeout=1)
    assert message is not None and message["channel"] == key.encode()
    assert message["data"] == await raw.get(key)
    assert 86_000_000 < await raw.pttl(key) <= 86_400_000, "result_expires: one day"
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_waiters_share_one_pub_sub_connection(
    backend: RedisBackend, raw: aioredis.Redis
) -> None:
    async def subscribers() -> int:
        return sum(1 for c in await raw.client_list(_type="pubsub"))

    before = await subscribers()
    ids = [str(uuid.uuid4()) for _ in range(50)]
    waits = [asyncio.create_task(backend.wait(i, timeout=5)) for i in ids]
    await asyncio.sleep(0.3)
    assert await subscribers() == before + 1
    counts = await raw.pubsub_numsub(*(f"celery-task-meta-{i}" for i in ids))
    assert sum(n for _, n in counts) == 50

    await backend.store_many([ResultMeta(i, states.SUCCESS, result=i) for i in ids])

    assert [m.result for m in await asyncio.wait_for(asyncio.gather(*waits), 1)] == ids


async def test_members_and_claims_are_set_with_expiry(url: str, raw: aioredis.Redis) -> None:
    backend = backend_from_url(url, BackendOptions(expires=30))
    await backend.connect()
    group, name = str(uuid.uuid4()), str(uuid.uuid4())
    assert await backend.mark_done(group, "a") == 1
    assert await backend.claim(name)
    assert 0 < await raw.pttl(f"celeriac-group-done-{group}") <= 30_000
    assert 0 < await raw.pttl(f"celeriac-claim-{name}") <= 30_000
    await raw.delete(f"celeriac-group-done-{group}", f"celeriac-claim-{name}")
    await backend.close()


async def test_an_unreachable_store_is_named_without_its_password() -> None:
    backend = backend_from_url("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(BackendError) as raised:
        await backend.connect()
    message = str(raised.value)
    assert "redis://:***@127.0.0.1:1/0" in message and "hunter2" not in message
    assert "redis-server" in message
    await backend.close()


async def test_a_prefix_applies_to_keys_and_channels(raw: aioredis.Redis) -> None:
    prefixed = redis_url()
    backend = backend_from_url(prefixed)
    await backend.connect()
    task_id = str(uuid.uuid4())
    await backend.store(ResultMeta(task_id, states.SUCCESS, result=1))
    prefix = prefixed.partition("prefix=")[2]
    assert await raw.exists(f"{prefix}celery-task-meta-{task_id}") == 1
    assert await raw.exists(f"celery-task-meta-{task_id}") == 0
    await backend.close()
