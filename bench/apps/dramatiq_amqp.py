"""A Dramatiq app with one no-op actor: ``RabbitmqBroker`` plus ``Results`` on Redis.

``BENCH_DRAMATIQ_CONFIRM=1`` turns on publisher confirms (``confirm_delivery``;
Dramatiq's default is off), for a like-for-like enqueue figure.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.apps.amqp_common import AMQP_URL
from bench.apps.redis_common import URL, incr_done

confirm = os.environ.get("BENCH_DRAMATIQ_CONFIRM") == "1"
broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=confirm)  # type: ignore[no-untyped-call]
backend = RedisBackend(url=URL)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
