"""A celeriac app with one no-op task for ``bench/events_overhead.py``.

``BENCH_EVENTS_BROKER`` and ``BENCH_EVENTS_BACKEND`` name the broker and the
result store; every other setting is celeriac's default (results stored).
Task events are on only when the worker runs with ``-E``.
"""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac(
    "bench",
    broker=os.environ.get("BENCH_EVENTS_BROKER", "sqlite:////tmp/celeriac-events-bench.db"),
    backend=os.environ.get("BENCH_EVENTS_BACKEND"),
)


@app.task
def noop() -> int:
    return 1
