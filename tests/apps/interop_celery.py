"""The Celery side of the interop tests: a plain Celery 5 app (broker and results from env).

``INTEROP_BROKER`` is the RabbitMQ URL, ``INTEROP_BACKEND`` the Redis URL.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "interop",
    broker=os.environ.get("INTEROP_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("INTEROP_BACKEND", "redis://127.0.0.1:6379/15"),
)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")


@app.task(name="interop.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.mul")  # type: ignore[untyped-decorator]
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.tsum")  # type: ignore[untyped-decorator]
def tsum(numbers: list[int]) -> int:
    return sum(numbers)
