"""A celeriac app with one no-op task on the PostgreSQL broker and result store.

Both on ``BENCH_CELERIAC_PG_URL`` (``postgresql://postgres@127.0.0.1:5432/test?schema=
bench_celeriac`` by default; ``bench/postgres_vs_peers.py`` sets it and drops the schema
between measurements). Every other setting is celeriac's default (results stored,
PENDING stored at send, in the publish's own transaction since both share the schema).
"""

from __future__ import annotations

import os

from celeriac import Celeriac

URL = os.environ.get(
    "BENCH_CELERIAC_PG_URL", "postgresql://postgres@127.0.0.1:5432/test?schema=bench_celeriac"
)

app = Celeriac("bench", broker=URL, backend=URL)


@app.task
def noop() -> int:
    """Returns 1, which the worker stores as the task's result."""
    return 1
