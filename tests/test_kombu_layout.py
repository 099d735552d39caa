"""Celery 5 and celeriac sharing one Redis broker on kombu's layout (``?layout=kombu``).

Real subprocesses on Redis db 9 (flushed around this module): ``celery ... worker
-P solo`` on kombu's own transport, ``python -m celeriac ... worker -P thread``
on ``redis://...?layout=kombu``; the clients are Celery's and celeriac's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from celeriac import Celeriac, chain, chord
from celeriac.brokers import broker_from_url
from celeriac.brokers.base import BrokerOptions
from celeriac.protocol import Message, Outgoing
from celeriac.testing import WorkerProcess

from .celery_peers import celery_client, close_celery, running
from .services import redis_url
from .worker_processes import ROOT, runs, wait_for

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.slow

DB = 9
TIMEOUT = 60
VISIBILITY = 3.0
"""The visibility timeout of the tests that kill a worker, on both sides."""


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Redis db 9, flushed before and after this module: Celery's keys carry no prefix."""
    url = redis_url(prefixed=False, db=DB)
    with redis.Redis.from_url(url) as client:
        client.flushdb()
        yield url
        client.flushdb()


@pytest.fixture
def kombu_url(base_url: str) -> str:
    return f"{base_url}?layout=kombu"


def prefixed(kombu_url: str, prefix: str) -> str:
    """``kombu_url`` with every key under ``prefix`` (kombu's ``global_keyprefix``)."""
    return f"{kombu_url}&global_keyprefix={prefix}"


@contextlib.contextmanager
def celery_worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = ["celery", "-A", "tests.apps.kombu_celery", "worker", "-P", "solo", "-Q", "celery"]
    options = ["-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with running([*command, *options], env, tmp_path / "celery.log") as process:
        yield process


def celeriac_worker(app_ref: str, env: dict[str, str], tmp_path: Path, name: str) -> WorkerProcess:
    return WorkerProcess(
        app_ref, "-P", "thread", "-c", "2", cwd=ROOT, env=env, log=tmp_path / f"{name}.log"
    ).start()


@contextlib.contextmanager
def celeriac_running(
    app_ref: str, env: dict[str, str], tmp_path: Path, name: str
) -> Iterator[WorkerProcess]:
    worker = celeriac_worker(app_ref, env, tmp_path, name)
    try:
        yield worker
    finally:
        worker.stop()


def test_a_celery_client_runs_tasks_on_a_celeriac_worker(
    base_url: str, kombu_url: str, tmp_path: Path
) -> None:
    env = {
        "CELERIAC_BROKER_URL": kombu_url,
        "CELERIAC_RESULT_BACKEND": base_url,
        "PYTHONPATH": str(ROOT),
    }
    client = celery_client(base_url, base_url)
    sig = client.signature
    try:
        with celeriac_running("tests.apps.interop_celeriac", env, tmp_path, "celeriac"):
            assert client.send_task("interop.add", (2, 3)).get(timeout=TIMEOUT) == 5

            sent = time.time()
            later = client.send_task("interop.add", (4, 4), countdown=2)
            assert later.get(timeout=TIMEOUT) == 8
            assert time.time() - sent >= 2, "a countdown is not early"

            steps = sig("interop.add", (1, 2)) | sig("interop.mul", (10,))
            assert steps.apply_async().get(timeout=TIMEOUT) == 30

            header = [sig("interop.add", (i, i)) for i in range(5)]
            summed = celery.chord(header)(sig("interop.tsum"))
            assert summed.get(timeout=TIMEOUT) == 20

            failing = client.send_task("interop.add", ("a", 1))
            with pytest.raises(TypeError):
                failing.get(timeout=TIMEOUT)
            del later, steps, summed, failing
    finally:
        close_celery(client)


async def test_a_celeriac_client_runs_tasks_on_a_celery_worker(
    base_url: str, kombu_url: str, tmp_path: Path
) -> None:
    app = Celeriac("client", broker=kombu_url, backend=base_url, set_as_current=False)
    env = {"KOMBU_BROKER": base_url, "KOMBU_BACKEND": base_url}
    try:
        with celery_worker(env, tmp_path):
            result = await app.asend_task("interop.add", (2, 3))
            assert await result.aget(timeout=TIMEOUT) == 5

            sent = time.time()
            later = await app.asend_task("interop.mul", (6, 7), countdown=2)
            assert await later.aget(timeout=TIMEOUT) == 42
            assert time.time() - sent >= 2, "a countdown is not early"

            add_then_mul = chain(
                app.signature("interop.add", (1, 2)), app.signature("interop.mul", (10,))
            )
            steps = await add_then_mul.aapply_async()
            assert await steps.aget(timeout=TIMEOUT) == 30

            header = [app.signature("interop.add", (i, i)) for i in range(5)]
            summed = await chord(header, app.signature("interop.tsum")).aapply_async()
            assert await summed.aget(timeout=TIMEOUT) == 20

            failing = await app.asend_task("interop.add", ("a", 1))
            with pytest.raises(Exception) as raised:
                await failing.aget(timeout=TIMEOUT)
            assert type(raised.value).__name__ == "TypeError"
    finally:
        await app.aclose()


async def test_a_chord_on_kombus_layout(base_url: str, kombu_url: str, tmp_path: Path) -> None:
    """celeriac on both sides of a chord on kombu's layout."""
    env = {
        "CELERIAC_BROKER_URL": kombu_url,
        "CELERIAC_RESULT_BACKEND": base_url,
        "PYTHONPATH": str(ROOT),
    }
    app = Celeriac("client", broker=kombu_url, backend=base_url, set_as_current=False)
    try:
        with celeriac_running("tests.apps.interop_celeriac", env, tmp_path, "celeriac"):
            header = [app.signature("interop.add", (i, i)) for i in range(5)]
            summed = await chord(header, app.signature("interop.tsum")).aapply_async()
            assert await summed.aget(timeout=TIMEOUT) == 20
    finally:
        await app.aclose()


async def test_a_celeriac_publish_is_what_a_celery_client_stores(kombu_url: str) -> None:
    """The list named after the queue, step lists for priorities, kombu's bindings."""
    broker = broker_from_url(kombu_url, BrokerOptions())
    await broker.connect()
    message = Message(headers={"task": "interop.add", "id": "t-1"}, body=b"[[1, 2], {}, {}]")
    try:
        await broker.publish([Outgoing("kq", message, 0), Outgoing("kq", message, 7)])
    finally:
        await broker.close()
    with redis.Redis.from_url(kombu_url.partition("?")[0]) as client:
        assert client.smembers("_kombu.binding.kq") == {b"kq\x06\x16\x06\x16kq"}
        assert client.llen("kq") == 1
        [stored] = client.lrange("kq\x06\x166", 0, -1)
        client.delete("kq", "kq\x06\x166", "_kombu.binding.kq", "_kombu.binding_permanent.kq")
    envelope = orjson.loads(stored)
    assert envelope["body"] == "W1sxLCAyXSwge30sIHt9XQ=="
    assert envelope["headers"] == {"task": "interop.add", "id": "t-1"}
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "kq"}
    assert (envelope["properties"]["priority"], envelope["properties"]["body_encoding"]) == (
        7,
        "base64",
    )


@pytest.mark.parametrize("restorer", ["celeriac", "celery"])
async def test_a_sigkilled_celeriac_worker_loses_nothing(
    base_url: str, tmp_path: Path, restorer: str
) -> None:
    """A worker dies mid-task and holding a countdown: after the visibility timeout a
    celeriac worker, or Celery's, restores both and runs each once."""
    options = orjson.dumps({"layout": "kombu", "visibility_timeout": VISIBILITY}).decode()
    env = {
        "CELERIAC_BROKER_URL": base_url,
        "CELERIAC_BROKER_TRANSPORT_OPTIONS": options,
        "CELERIAC_RESULT_BACKEND": base_url,
        "CELERIAC_BROKER_LEASE_TIMEOUT": "2",
        "RUN_LOG": str(tmp_path / "runs.log"),
        "PYTHONPATH": str(ROOT),
    }
    app = Celeriac(
        "client",
        broker=base_url,
        backend=base_url,
        broker_transport_options={"layout": "kombu"},
        set_as_current=False,
    )
    unacked = redis.Redis.from_url(base_url)
    doomed = celeriac_worker("tests.apps.durable", env, tmp_path, "doomed")
    try:
        slow = await app.asend_task("tests.apps.durable.work", (1, 5.0))
        later = await app.asend_task("tests.apps.durable.work", (2, 0.0), countdown=3)
        wait_for(lambda: unacked.hlen("unacked") == 2, 10, "the worker holds both")
        assert doomed.proc is not None
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(10)
        killed = time.time()
        assert runs(env) == {}

        heir: contextlib.AbstractContextManager[object]
        if restorer == "celeriac":
            heir = celeriac_running("tests.apps.durable", env, tmp_path, "heir")
        else:
            celery_env = {**env, "KOMBU_BROKER": base_url, "KOMBU_BACKEND": base_url}
            celery_env["KOMBU_VISIBILITY_TIMEOUT"] = str(VISIBILITY)
            heir = celery_worker(celery_env, tmp_path)
        with heir:
            assert await later.aget(timeout=TIMEOUT) == 2
            assert time.time() - killed >= VISIBILITY - 1, "restored before its timeout"
            assert await slow.aget(timeout=TIMEOUT) == 1
        assert runs(env) == {slow.id: 1, later.id: 1}
        assert unacked.hlen("unacked") == 0
    finally:
        doomed.stop()
        unacked.close()
        await app.aclose()


async def test_a_sigkilled_celery_workers_task_is_restored_by_a_celeriac_worker(
    base_url: str, tmp_path: Path
) -> None:
    """kombu wrote the ``unacked`` entry; celeriac's sweep reads it and runs the task."""
    env = {
        "KOMBU_BROKER": base_url,
        "KOMBU_BACKEND": base_url,
        "KOMBU_VISIBILITY_TIMEOUT": str(VISIBILITY),
        "CELERIAC_BROKER_URL": f"{base_url}?layout=kombu&visibility_timeout={VISIBILITY}",
        "CELERIAC_RESULT_BACKEND": base_url,
        "RUN_LOG": str(tmp_path / "runs.log"),
        "PYTHONPATH": str(ROOT),
    }
    app = Celeriac("client", broker=env["CELERIAC_BROKER_URL"], backend=base_url)
    unacked = redis.Redis.from_url(base_url)
    try:
        with celery_worker(env, tmp_path) as doomed:
            slow = await app.asend_task("tests.apps.durable.work", (1, 5.0))
            wait_for(lambda: unacked.hlen("unacked") == 1, 20, "Celery's worker holds it")
            doomed.kill()
            doomed.wait(10)
        killed = time.time()
        assert runs(env) == {}
        with celeriac_running("tests.apps.durable", env, tmp_path, "heir"):
            assert await slow.aget(timeout=TIMEOUT) == 1
            assert time.time() - killed >= VISIBILITY - 1, "restored before its timeout"
        assert runs(env) == {slow.id: 1}
        assert unacked.hlen("unacked") == 0
    finally:
        unacked.close()
        await app.aclose()


async def test_eta_tasks_wait_in_the_worker_and_keep_their_order(kombu_url: str) -> None:
    """A delayed message waits in the list, then in the consumer that took it (unacked,
    as Celery's worker holds an ETA task), and comes out when due, earliest first."""
    options = BrokerOptions(lease_timeout=1.0, poll_interval=0.02)
    broker = broker_from_url(prefixed(kombu_url, "eta:"), options)
    await broker.connect()
    now = time.time()
    batch = [
        Outgoing("q", Message(headers={"task": "t", "id": str(n)}, body=b"[]"), 0, now + delay)
        for n, delay in ((3, 0.6), (1, 0.2), (2, 0.4))
    ]
    await broker.publish(batch)
    consumer = broker.consumer(["q"], "c")
    try:
        got = [d for _ in range(3) for d in await consumer.fetch(1, timeout=2)]
        assert time.time() - now >= 0.55
        assert [d.message.headers["id"] for d in got] == ["1", "2", "3"]
        await consumer.requeue(got[0], delay=0.3)
        assert await consumer.fetch(1, timeout=0.1) == []
        assert (await broker.stats("q")).reserved == 3  # held here, unacked
        [again] = await consumer.fetch(1, timeout=1)
        assert (again.message, again.delivery_count) == (got[0].message, 2)
        for d in [again, *got[1:]]:
            await consumer.ack(d)
        await consumer.flush_acks()
        assert (await broker.stats("q")).reserved == 0
    finally:
        await consumer.close()
        await broker.close()


async def test_priority_zero_comes_first_as_in_celery(kombu_url: str) -> None:
    options = BrokerOptions(poll_interval=0.02)
    broker = broker_from_url(prefixed(kombu_url, "priority:"), options)
    await broker.connect()
    priorities = [9, 0, 5, 3, 7, 1]
    await broker.publish(
        [
            Outgoing("q", Message(headers={"task": "t", "id": str(i)}, body=b"[]"), p)
            for i, p in enumerate(priorities)
        ]
    )
    consumer = broker.consumer(["q"], "c")
    try:
        got = await consumer.fetch(10, timeout=1)
        # steps 0 (0, 1), 3 (5, 3), 6 (7), 9 (9): publish order within a step
        assert [d.message.headers["id"] for d in got] == ["1", "5", "2", "3", "4", "0"]
    finally:
        await consumer.close()
        await broker.close()


async def test_kombus_transport_options_shape_the_keys(base_url: str) -> None:
    """Set as a Celery user sets them: ``broker_transport_options``, URL untouched."""
    transport = {"layout": "kombu", "priority_steps": [0, 5], "global_keyprefix": "steps:"}
    broker = broker_from_url(base_url, BrokerOptions(transport_options=transport))
    await broker.connect()
    message = Message(headers={"task": "t", "id": "s-1"}, body=b"[]")
    try:
        await broker.publish([Outgoing("q", message, 4), Outgoing("q", message, 7)])
    finally:
        await broker.close()
    with redis.Redis.from_url(base_url) as client:
        assert (client.llen("steps:q"), client.llen("steps:q\x06\x165")) == (1, 1)
        client.delete("steps:q", "steps:q\x06\x165")


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(Exception, match="unknown broker layout 'lists'"):
        broker_from_url("redis://127.0.0.1:6379/9?layout=lists")
