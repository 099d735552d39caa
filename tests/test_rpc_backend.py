"""The ``rpc://`` result store against a real RabbitMQ (the contract is in conformance/)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from celeriac import Celeriac, states
from celeriac.amqp.rpc import RpcBackend
from celeriac.amqp.wire import split_url
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultMeta
from celeriac.errors import BackendError
from celeriac.testing import WorkerProcess, worker_thread

from .services import rabbitmq_url

ROOT = str(Path(__file__).resolve().parent.parent)

PEER = """
import asyncio, sys
from celeriac.backends import backend_from_url
from celeriac.amqp.rpc import RpcBackend

async def main(url, task_id):
    backend = backend_from_url(url)
    await backend.connect()
    print(RpcBackend.reply_queue_for(url), flush=True)
    try:
        meta = await backend.wait(task_id, timeout=float(sys.argv[3]))
        print(meta.result, flush=True)
    except TimeoutError:
        print("none", flush=True)
    await backend.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def peer(url: str, task_id: str, timeout: float) -> tuple[asyncio.subprocess.Process, str]:
    """A process waiting for ``task_id``'s result, and the name of its reply queue."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER, url, task_id, str(timeout), stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    queue = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().strip()
    assert queue
    return process, queue


async def test_a_result_goes_to_the_callers_reply_queue_only() -> None:
    url = rabbitmq_url(scheme="rpc")
    task_id = str(uuid.uuid4())
    caller, queue = await peer(url, task_id, 30)
    bystander, other = await peer(url, task_id, 2)
    assert queue != other
    backend = backend_from_url(url)
    await backend.connect()
    await backend.store(ResultMeta(task_id, states.STARTED), reply_to=queue)
    await backend.store(ResultMeta(task_id, states.SUCCESS, result=42), reply_to=queue)
    out, _ = await asyncio.wait_for(caller.communicate(), 60)
    assert out.strip() == b"42"
    out, _ = await asyncio.wait_for(bystander.communicate(), 60)
    assert out.strip() == b"none"
    await backend.close()


async def test_a_process_that_connects_later_never_sees_the_result() -> None:
    """As in Celery: the result was a message, sent once, to the clients then connected."""
    url = rabbitmq_url(scheme="rpc")
    task_id = str(uuid.uuid4())
    backend = backend_from_url(url)
    await backend.connect()
    await backend.store(ResultMeta(task_id, states.SUCCESS, result=42))
    process, _ = await peer(url, task_id, 1.0)
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


async def test_a_worker_in_another_process_replies_to_the_caller() -> None:
    broker, results = rabbitmq_url(), rabbitmq_url(scheme="rpc")
    app = Celeriac("rpc-test", broker=broker, backend=results)
    with WorkerProcess(
        "tests.apps.interop_celeriac",
        env={
            "CELERIAC_BROKER_URL": broker,
            "CELERIAC_RESULT_BACKEND": results,
            "PYTHONPATH": ROOT,
        },
    ):
        sent = [await app.asend_task("interop.add", (i, i)) for i in range(10)]
        assert [await r.aget(timeout=30) for r in sent] == [2 * i for i in range(10)]
        failed = await app.asend_task("interop.add", ("a", 1))
        with pytest.raises(TypeError):
            await failed.aget(timeout=30)
    await app.aclose()


async def test_a_late_earlier_state_does_not_hide_a_ready_one() -> None:
    url = rabbitmq_url(scheme="rpc")
    receiver = backend_from_url(url)
    await receiver.connect()
    queue = RpcBackend.reply_queue_for(url)
    task_id = str(uuid.uuid4())
    await receiver.store(ResultMeta(task_id, states.SUCCESS, result=1))
    # A message from another process (no origin header of ours): STARTED after SUCCESS.
    import aio_pika

    connection = await aio_pika.connect(split_url(url.replace("rpc://", "amqp://", 1))[0])
    channel = await connection.channel()
    body = orjson.dumps({"task_id": task_id, "status": "STARTED", "result": None})
    await channel.default_exchange.publish(
        aio_pika.Message(body, content_type="application/json"), routing_key=queue
    )
    await asyncio.sleep(0.5)
    meta = await receiver.get(task_id)
    assert meta is not None and meta.status == states.SUCCESS
    await connection.close()
    await receiver.close()
