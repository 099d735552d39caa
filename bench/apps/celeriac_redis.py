"""A celeriac app with one no-op task on the Redis broker and the Redis result store.

Both on ``BENCH_REDIS_URL`` (see :mod:`bench.apps.redis_common`); every other
setting is celeriac's default (results stored, PENDING stored at send).
"""

from __future__ import annotations

from bench.apps.redis_common import URL, incr_done
from celeriac import Celeriac

app = Celeriac("bench", broker=URL, backend=URL)


@app.task
def noop() -> int:
    """Counts itself (``INCR``, as every system's task does) and returns 1."""
    incr_done()
    return 1
