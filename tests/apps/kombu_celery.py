"""The Celery side of ``tests/test_kombu_layout.py``: Celery 5 on kombu's Redis transport.

``KOMBU_BROKER`` and ``KOMBU_BACKEND`` are Redis URLs; ``KOMBU_VISIBILITY_TIMEOUT``
is the transport's ``visibility_timeout`` (kombu's 3600 by default), with a sweep
on every poll so a short one shows. The task names are celeriac's test apps'
(:mod:`tests.apps.interop_celeriac`, :mod:`tests.apps.durable`), so either side's
client reaches either side's worker.
"""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery(
    "kombu_interop",
    broker=os.environ.get("KOMBU_BROKER", "redis://127.0.0.1:6379/9"),
    backend=os.environ.get("KOMBU_BACKEND", "redis://127.0.0.1:6379/9"),
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,  # as celeriac: a task whose worker dies is delivered again
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("KOMBU_VISIBILITY_TIMEOUT", "3600")),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)


@app.task(name="interop.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.mul")  # type: ignore[untyped-decorator]
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.tsum")  # type: ignore[untyped-decorator]
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(name="tests.apps.durable.work", bind=True)  # type: ignore[untyped-decorator]
def work(self, n: int, seconds: float) -> int:  # type: ignore[no-untyped-def]
    """:func:`tests.apps.durable.work`: sleeps, then logs ``<id> <pid>`` to RUN_LOG."""
    time.sleep(seconds)
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{self.request.id} {os.getpid()}\n")
    return n
