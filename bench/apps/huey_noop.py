"""A Huey app with one no-op task, on ``SqliteHuey`` with Huey's defaults.

``BENCH_HUEY_DB`` names the database file. Huey's defaults: WAL, and SQLite's
default ``synchronous`` (FULL: Huey sets it only when ``fsync=`` is given).
"""

from __future__ import annotations

import os

from huey import SqliteHuey

DB = os.environ.get("BENCH_HUEY_DB", "/tmp/huey-bench.db")

huey = SqliteHuey("bench", filename=DB)


@huey.task()  # type: ignore[untyped-decorator]
def noop() -> int:
    """Returns 1: Huey does not store a None result, and the drain counts results."""
    return 1
