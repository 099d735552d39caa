"""The Celery side of ``tests/test_events.py``: a Celery 5 worker whose events are the oracle.

``EVENTS_BROKER`` is the broker URL (Redis, kombu's transport); no result
store. The tasks are :mod:`tests.apps.events_celeriac`'s, by name, each
making one kind of task event.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.exceptions import Reject

app = Celery("events_oracle", broker=os.environ.get("EVENTS_BROKER", "redis://127.0.0.1:6379/10"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_acks_late=True,  # as celeriac: a rejected task is a task-rejected event too
)


@app.task(name="events.add")  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="events.boom")  # type: ignore[untyped-decorator]
def boom() -> None:
    raise ValueError("boom")


@app.task(name="events.flaky", bind=True)  # type: ignore[untyped-decorator]
def flaky(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0.1, exc=KeyError("once"))
    return "ok"


@app.task(name="events.refuse")  # type: ignore[untyped-decorator]
def refuse() -> None:
    raise Reject("no", requeue=False)
