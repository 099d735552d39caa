"""A Taskiq app with one no-op task: taskiq-redis ``ListQueueBroker`` and its Redis results.

Taskiq is async-only: tasks are sent with ``await noop.kiq()``. The task is a
coroutine (Taskiq's native kind) and does its ``INCR`` on an asyncio Redis
connection, the same single command every other system's task sends.
"""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

from bench.apps.redis_common import DONE_KEY, URL

broker = ListQueueBroker(URL, queue_name="bench").with_result_backend(RedisAsyncResultBackend(URL))

_client: tuple[int, aioredis.Redis] | None = None


@broker.task
async def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), aioredis.Redis.from_url(URL))
    await _client[1].incr(DONE_KEY)
    return 1
