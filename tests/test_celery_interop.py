"""Celery 5 and celeriac on one RabbitMQ and one Redis result store, both ways round.

Queue ``celery`` with Celery's own defaults, in a vhost of its own
(``celeriac-interop-<pid>``) so the names are exactly Celery's. The workers are
real subprocesses: ``python -m celeriac ... worker -P thread`` and
``celery ... worker -P solo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celeriac import Celeriac, GroupResult, chord, states
from celeriac.errors import ChordError

from .celery_peers import celery_client, close_celery, running
from .services import rabbitmq_vhost, redis_url
from .worker_processes import wait_for

celery = pytest.importorskip("celery")

VHOST = f"celeriac-interop-{os.getpid()}"
"""A vhost of this run's own: runs at the same time do not share queues."""
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
SPLIT_QUEUES = ("celery", "interop-celeriac")
"""Where the split-header test sends even and odd header tasks: the Celery worker's
queue, the celeriac worker's."""


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    with rabbitmq_vhost(VHOST) as url:
        yield url


@pytest.fixture(scope="module")
def backend_url() -> str:
    return redis_url(prefixed=False)  # Celery's key layout: no prefix


def celeriac_worker(
    broker_url: str, backend_url: str, *options: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_RESULT_BACKEND": backend_url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "celeriac", "-A", "tests.apps.interop_celeriac", "worker"]
    return running([*command, "-P", "thread", *options], env)


def celery_worker(
    broker_url: str, backend_url: str, queue: str = "celery"
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = {"INTEROP_BROKER": broker_url, "INTEROP_BACKEND": backend_url}
    command = ["celery", "-A", "tests.apps.interop_celery", "worker", "-P", "solo", "-Q", queue]
    return running([*command, "-l", "warning", "--without-gossip", "--without-mingle"], env)


def test_a_celery_client_runs_tasks_on_a_celeriac_worker(broker_url: str, backend_url: str) -> None:
    client = celery_client(broker_url, backend_url)
    sig = client.signature
    with celeriac_worker(broker_url, backend_url, "-c", "2"):
        assert client.send_task("interop.add", (2, 3)).get(timeout=TIMEOUT) == 5

        sent = time.time()
        later = client.send_task("interop.add", (4, 4), countdown=2)
        assert later.get(timeout=TIMEOUT) == 8
        assert time.time() - sent >= 2, "a countdown is not early"

        chain = sig("interop.add", (1, 2)) | sig("interop.mul", (10,))
        assert chain.apply_async().get(timeout=TIMEOUT) == 30

        del later, chain
    close_celery(client)


async def test_a_celery_chord_runs_on_a_celeriac_worker(broker_url: str, backend_url: str) -> None:
    """Celery's client sets the chord's size and saves no group: the worker speaks Celery's keys."""
    client = celery_client(broker_url, backend_url)
    sig = client.signature
    summed = celery.chord([sig("interop.add", (i, i)) for i in range(5)])(sig("interop.tsum"))
    body = sig("interop.tsum").on_error(sig("interop.note_failure"))
    failing = celery.chord([sig("interop.add", (1, 1)), sig("interop.add", ("a", 1))])(body)
    summed_id, failing_id, culprit = summed.id, failing.id, failing.parent.results[1].id
    del summed, failing
    close_celery(client)
    reader = Celeriac("reader", broker=broker_url, backend=backend_url)
    errbacks = redis.Redis.from_url(backend_url)
    try:
        with celeriac_worker(broker_url, backend_url, "-c", "2"):
            assert await reader.AsyncResult(summed_id).aget(timeout=TIMEOUT) == 20
            with pytest.raises(ChordError, match=f"^Dependency {culprit} raised TypeError"):
                await reader.AsyncResult(failing_id).aget(timeout=TIMEOUT)
            key = f"interop-failed-{failing_id}"
            await asyncio.to_thread(
                wait_for, lambda: errbacks.get(key) == b"1", TIMEOUT, "the body's errback"
            )
    finally:
        errbacks.delete(f"interop-failed-{failing_id}")
        errbacks.close()
        await reader.aclose()


async def test_a_celeriac_chord_runs_on_a_celery_worker(broker_url: str, backend_url: str) -> None:
    """celeriac's client sets Celery's size key, without which Celery's worker never completes."""
    app = Celeriac("client", broker=broker_url, backend=backend_url)
    sig = app.signature
    with celery_worker(broker_url, backend_url):
        header = [sig("interop.add", (i, i)) for i in range(5)]
        summed = await chord(header, sig("interop.tsum")).aapply_async()
        assert await summed.aget(timeout=TIMEOUT) == 20
        header = [sig("interop.add", (1, 1)), sig("interop.add", ("a", 1))]
        failing = await chord(header, sig("interop.tsum")).aapply_async()
        # Celery's worker joins through the group celeriac's client saved: its wording,
        # read back as celeriac's ChordError although Celery's worker stored it.
        with pytest.raises(ChordError, match=r"^Join error: TypeError"):
            await failing.aget(timeout=TIMEOUT)
    await app.aclose()


@pytest.mark.parametrize("sender", ["celery", "celeriac"])
async def test_a_chord_header_split_across_celeriac_and_celery_workers(
    broker_url: str, backend_url: str, sender: str
) -> None:
    """Even header tasks go to the Celery worker, odd ones to the celeriac worker. The
    sender's kind of worker runs its part of the header first; the other kind starts
    once it is done, so it records the last part and completes the chord."""
    header = [((i, 10 * i), SPLIT_QUEUES[i % 2]) for i in range(6)]
    reader = Celeriac("reader", broker=broker_url, backend=backend_url)
    workers = [
        celery_worker(broker_url, backend_url),
        celeriac_worker(broker_url, backend_url, "-c", "2", "-Q", SPLIT_QUEUES[1]),
    ]
    if sender == "celery":
        client = celery_client(broker_url, backend_url)
        sig = client.signature
        sent = celery.chord(sig("interop.add", a).set(queue=q) for a, q in header)(
            sig("interop.tsum")
        )
        body_id, ids = sent.id, [r.id for r in sent.parent.results]
        del sent
        close_celery(client)
    else:
        workers.reverse()
        sig = reader.signature
        members = [sig("interop.add", a).set(queue=q) for a, q in header]
        result = await chord(members, sig("interop.tsum")).aapply_async()
        assert isinstance(result.parent, GroupResult)
        body_id, ids = result.id, [r.id for r in result.parent.results]
    first_part = ids[0::2] if sender == "celery" else ids[1::2]
    try:
        with workers[0]:
            await asyncio.gather(*(reader.AsyncResult(i).aget(timeout=TIMEOUT) for i in first_part))
            assert await reader.AsyncResult(body_id).astate() == states.PENDING
            with workers[1]:
                assert await reader.AsyncResult(body_id).aget(timeout=TIMEOUT) == 165
    finally:
        await reader.aclose()


async def test_duplicate_header_deliveries_fire_the_body_once(
    broker_url: str, backend_url: str
) -> None:
    """A copy of a header task (as a redelivery makes) arrives before the chord is
    sent and another after it completed: the body gets each result once, and runs once."""
    client = celery_client(broker_url, backend_url)
    sig = client.signature
    sent = celery.chord([sig("interop.add", (i, i)) for i in range(5)], sig("interop.tally"))
    frozen = sent.freeze()
    body_id, group_id = frozen.id, frozen.parent.id
    duplicate = sent.tasks.tasks[0].clone()
    duplicate.apply_async(group_id=group_id)  # delivered before the chord is sent
    sent.apply_async()
    duplicate.apply_async(group_id=group_id)  # ... and after the other header tasks
    del sent, frozen
    close_celery(client)
    reader = Celeriac("reader", broker=broker_url, backend=backend_url)
    runs = redis.Redis.from_url(backend_url)
    try:
        with celeriac_worker(broker_url, backend_url, "-c", "1"):
            assert await reader.AsyncResult(body_id).aget(timeout=TIMEOUT) == 20
            # One slot, one queue: whatever the last copy sent is done before this runs.
            after = await reader.asend_task("interop.add", (0, 0))
            assert await after.aget(timeout=TIMEOUT) == 0
        assert runs.get(f"interop-runs-{body_id}") == b"1"
    finally:
        runs.delete(f"interop-runs-{body_id}")
        runs.close()
        await reader.aclose()


async def test_a_celeriac_client_runs_tasks_on_a_celery_worker(
    broker_url: str, backend_url: str
) -> None:
    app = Celeriac("client", broker=broker_url, backend=backend_url)
    with celery_worker(broker_url, backend_url):
        result = await app.asend_task("interop.add", (2, 3))
        assert await result.aget(timeout=TIMEOUT) == 5

        sent = time.time()
        later = await app.asend_task("interop.mul", (6, 7), countdown=2)
        assert await later.aget(timeout=TIMEOUT) == 42
        assert time.time() - sent >= 2, "a countdown is not early"

        results = [await app.asend_task("interop.add", (i, 1)) for i in range(20)]
        assert await asyncio.gather(*(r.aget(timeout=TIMEOUT) for r in results)) == [
            i + 1 for i in range(20)
        ]
    await app.aclose()


def test_a_celery_client_gets_rpc_results_from_a_celeriac_worker(broker_url: str) -> None:
    """Celery's rpc:// result store: the celeriac worker replies to the client's own queue."""
    client = celery_client(broker_url, "rpc://")
    with celeriac_worker(broker_url, "rpc://", "-c", "2"):
        results = [client.send_task("interop.add", (i, i)) for i in range(10)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(10)]
        failing = client.send_task("interop.add", ("a", 1))
        with pytest.raises(TypeError):
            failing.get(timeout=TIMEOUT)
        del results, failing
    consumer = client.backend.result_consumer
    consumer.stop()
    consumer._connection.close()  # Celery's close() leaves its reply connection open
    client.close()


async def test_a_celeriac_client_gets_rpc_results_from_a_celery_worker(broker_url: str) -> None:
    app = Celeriac("client", broker=broker_url, backend=broker_url)  # a RabbitMQ URL: rpc
    with celery_worker(broker_url, "rpc://"):
        results = [await app.asend_task("interop.add", (i, 1)) for i in range(10)]
        assert await asyncio.gather(*(r.aget(timeout=TIMEOUT) for r in results)) == [
            i + 1 for i in range(10)
        ]
    await app.aclose()
