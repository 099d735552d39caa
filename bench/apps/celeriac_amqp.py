"""A celeriac app with one no-op task: RabbitMQ broker, Redis result store, defaults otherwise."""

from __future__ import annotations

from bench.apps.amqp_common import AMQP_URL
from bench.apps.redis_common import URL, incr_done
from celeriac import Celeriac

app = Celeriac("bench", broker=AMQP_URL, backend=URL)


@app.task
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
