"""Celery 5 and celeriac on one RabbitMQ and one Redis result store, both ways round.

Queue ``celery`` with Celery's own defaults, in a vhost of its own
(``celeriac-interop``) so the names are exactly Celery's. The workers are
real subprocesses: ``python -m celeriac ... worker -P thread`` and
``celery ... worker -P solo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac

from .services import rabbitmq_url, redis_url

celery = pytest.importorskip("celery")

VHOST = "celeriac-interop"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    rabbitmq_url()  # skips (fails under CI) without RabbitMQ
    with contextlib.suppress(subprocess.CalledProcessError):
        rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
    rabbitmqctl("delete_vhost", VHOST)


@pytest.fixture(scope="module")
def backend_url() -> str:
    return redis_url(prefixed=False)  # Celery's key layout: no prefix


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def celery_client(broker_url: str, backend_url: str) -> Any:
    app = celery.Celery("client", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def close_celery(app: Any) -> None:
    """Close a Celery client and every Redis connection it opened (they would leak)."""
    gc.collect()  # Celery's results unsubscribe on __del__: before the client closes
    backend = app.backend
    with contextlib.suppress(Exception):
        backend.result_consumer.stop()
        # A result collected later would unsubscribe, and so reconnect: nothing to do now.
        backend.result_consumer.cancel_for = lambda *args, **kwargs: None
    with contextlib.suppress(Exception):
        backend.client.connection_pool.disconnect()
    app.close()


def test_a_celery_client_runs_tasks_on_a_celeriac_worker(broker_url: str, backend_url: str) -> None:
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_RESULT_BACKEND": backend_url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "celeriac", "-A", "tests.apps.interop_celeriac"]
    client = celery_client(broker_url, backend_url)
    sig = client.signature
    with running([*command, "worker", "-P", "thread", "-c", "2"], env):
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
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_RESULT_BACKEND": backend_url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "celeriac", "-A", "tests.apps.interop_celeriac"]
    client = celery_client(broker_url, backend_url)
    sig = client.signature
    # Celery's Redis store saves a chord's group only for nested headers;
    # celeriac's worker reads the members from it, so the client saves it
    # before any worker runs (as Celery's own worker would need for its fallback).
    chord = celery.chord([sig("interop.add", (i, i)) for i in range(5)])(sig("interop.tsum"))
    with warnings.catch_warnings():  # Celery calls redis-py's deprecated setex
        warnings.simplefilter("ignore", DeprecationWarning)
        chord.parent.save()
    chord_id = chord.id
    del chord
    close_celery(client)
    reader = Celeriac("reader", broker=broker_url, backend=backend_url)
    try:
        with running([*command, "worker", "-P", "thread", "-c", "2"], env):
            assert await reader.AsyncResult(chord_id).aget(timeout=15) == 20
    finally:
        await reader.aclose()


async def test_a_celeriac_client_runs_tasks_on_a_celery_worker(
    broker_url: str, backend_url: str
) -> None:
    env = {"INTEROP_BROKER": broker_url, "INTEROP_BACKEND": backend_url}
    command = ["celery", "-A", "tests.apps.interop_celery", "worker", "-P", "solo"]
    options = ["-Q", "celery", "-l", "warning", "--without-gossip", "--without-mingle"]
    app = Celeriac("client", broker=broker_url, backend=backend_url)
    with running([*command, *options], env):
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
    env = {
        "CELERIAC_BROKER_URL": broker_url,
        "CELERIAC_RESULT_BACKEND": "rpc://",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "celeriac", "-A", "tests.apps.interop_celeriac"]
    client = celery_client(broker_url, "rpc://")
    with running([*command, "worker", "-P", "thread", "-c", "2"], env):
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
    env = {"INTEROP_BROKER": broker_url, "INTEROP_BACKEND": "rpc://"}
    command = ["celery", "-A", "tests.apps.interop_celery", "worker", "-P", "solo"]
    options = ["-Q", "celery", "-l", "warning", "--without-gossip", "--without-mingle"]
    app = Celeriac("client", broker=broker_url, backend=broker_url)  # a RabbitMQ URL: rpc
    with running([*command, *options], env):
        results = [await app.asend_task("interop.add", (i, 1)) for i in range(10)]
        assert await asyncio.gather(*(r.aget(timeout=TIMEOUT) for r in results)) == [
            i + 1 for i in range(10)
        ]
    await app.aclose()
