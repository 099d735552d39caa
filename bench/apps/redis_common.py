"""What every ``bench/apps/*_redis`` app shares: the database URL and the done counter.

``BENCH_REDIS_URL`` names the Redis database (``redis://127.0.0.1:6379/12`` by
default; the benchmark flushes it between measurements). Every system's no-op
task does the same one thing: ``INCR`` of :data:`DONE_KEY` on that database, so
the drain workload counts completions the same way for all of them.
"""

from __future__ import annotations

import os

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DONE_KEY = "bench:done"

_client: tuple[int, redis.Redis] | None = None


def incr_done() -> int:
    """``INCR bench:done`` on a connection of this process (opened after any fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(URL))
    return int(_client[1].incr(DONE_KEY))
