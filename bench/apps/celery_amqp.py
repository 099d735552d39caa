"""A Celery app with one no-op task: RabbitMQ (py-amqp) broker, Redis results, JSON."""

from __future__ import annotations

from celery import Celery

from bench.apps.amqp_common import AMQP_URL
from bench.apps.redis_common import URL, incr_done

app = Celery("bench", broker=AMQP_URL, backend=URL)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")


@app.task  # type: ignore[untyped-decorator]
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
