"""A Dramatiq app with one no-op actor: ``RedisBroker`` plus the ``Results`` middleware.

The actor stores its result (``store_results=True``) in Dramatiq's Redis result
backend, as the other systems store theirs; everything else is Dramatiq's default.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.apps.redis_common import URL, incr_done

broker = RedisBroker(url=URL)  # type: ignore[no-untyped-call]
backend = RedisBackend(url=URL)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
