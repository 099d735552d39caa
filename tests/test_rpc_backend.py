"""The ``rpc://`` result store against a real RabbitMQ (the contract is in conformance/)."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest

from celeriac import Celeriac, states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultMeta
from celeriac.backends.rpc import RpcBackend
from celeriac.errors import BackendError
from celeriac.testing import worker_thread

from .services import rabbitmq_url

PEER = """
import asyncio, sys
from celeriac.backends import backend_from_url

async def main(url, task_id):
    backend = backend_from_url(url)
    await backend.connect()
    print("connected", flush=True)
    try:
        meta = await backend.wait(task_id, timeout=float(sys.argv[3]))
        print(meta.result, flush=True)
    except TimeoutError:
        print("none", flush=True)
    await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def peer(url: str, task_id: str, timeout: float) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER, url, task_id, str(timeout), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 60) == b"connected\n"
    return process


async def test_a_connected_process_receives_the_result_over_its_reply_queue() -> None:
    url = rabbitmq_url(scheme="rpc")
    task_id = str(uuid.uuid4())
    process = await peer(url, task_id, 30)
    backend = backend_from_url(url)
    await backend.connect()
    await backend.store(ResultMeta(task_id, states.SUCCESS, result=42))
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert out.strip() == b"42"
    await backend.close()


async def test_a_process_that_connects_later_never_sees_the_result() -> None:
    """As in Celery: the result was a message, sent once, to the clients then connected."""
    url = rabbitmq_url(scheme="rpc")
    task_id = str(uuid.uuid4())
    backend = backend_from_url(url)
    await backend.connect()
    await backend.store(ResultMeta(task_id, states.SUCCESS, result=42))
    process = await peer(url, task_id, 1.0)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert out.strip() == b"none"
    await backend.close()


async def test_results_of_a_worker_reach_the_caller() -> None:
    app = Celeriac("rpc-test", broker=rabbitmq_url(), backend=rabbitmq_url(scheme="rpc"))

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def boom() -> None:
        raise ValueError("no")

    await app.abackend()  # the reply queue exists before the tasks are sent
    with worker_thread(app, concurrency=2):
        results = [await add.adelay(i, i) for i in range(10)]
        assert [await r.aget(timeout=30) for r in results] == [2 * i for i in range(10)]
        failed = await boom.adelay()
        with pytest.raises(ValueError, match="no"):
            await failed.aget(timeout=30)
    await app.aclose()


async def test_unreachable_rabbitmq_says_so_without_the_password() -> None:
    rabbitmq_url()  # skips without RabbitMQ, like the rest of the module
    backend = backend_from_url("rpc://guest:s3cret@127.0.0.1:1//")
    assert isinstance(backend, RpcBackend)
    with pytest.raises(BackendError) as raised:
        await backend.connect()
    assert "s3cret" not in str(raised.value)
    assert "rpc://guest:***@127.0.0.1:1//" in str(raised.value)
