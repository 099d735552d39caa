"""A celeriac app with one no-op task, on the embedded SQLite broker and result store.

``BENCH_CELERIAC_DB`` names the database file (absolute path; not ``CELERIAC_*``, which
would be read as a setting); everything else
is celeriac's default (``synchronous=FULL`` publishes, results beside them).
"""

from __future__ import annotations

import os

from celeriac import Celeriac

DB = os.environ.get("BENCH_CELERIAC_DB", "/tmp/celeriac-bench.db")

app = Celeriac("bench", broker=f"sqlite:///{DB}")


@app.task
def noop() -> int:
    """Returns 1 rather than None so both queues store a result (Huey skips None)."""
    return 1
