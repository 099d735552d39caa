"""A Huey app with one no-op task on ``RedisHuey``, Huey's defaults (blocking ``BRPOP`` reads)."""

from __future__ import annotations

from huey import RedisHuey

from bench.apps.redis_common import URL, incr_done

huey = RedisHuey("bench", url=URL)


@huey.task()  # type: ignore[untyped-decorator]
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does); returns 1 so Huey stores it."""
    incr_done()
    return 1
