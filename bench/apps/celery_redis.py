"""A Celery app with one no-op task, Redis broker and Redis result backend, Celery's defaults."""

from __future__ import annotations

from celery import Celery

from bench.apps.redis_common import URL, incr_done

app = Celery("bench", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True


@app.task  # type: ignore[untyped-decorator]
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
