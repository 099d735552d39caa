"""A Procrastinate 3 app with one no-op task, in a PostgreSQL schema of its own.

``BENCH_PROCRASTINATE_PG_URL`` names the database (libpq URL, default
``postgresql://postgres@127.0.0.1:5432/test``) and ``BENCH_PROCRASTINATE_SCHEMA``
the schema (default ``bench_procrastinate``): every connection of its pools
starts with ``search_path`` set to it (libpq ``options``), so ``apply_schema``
creates Procrastinate's tables, types and functions there and the worker finds
them. Every other setting is Procrastinate's default (``PsycopgConnector``; the
sync API opens its own ``SyncPsycopgConnector`` when the app is opened with ``open()``).
"""

from __future__ import annotations

import os

import procrastinate

URL = os.environ.get("BENCH_PROCRASTINATE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = os.environ.get("BENCH_PROCRASTINATE_SCHEMA", "bench_procrastinate")

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=URL, kwargs={"options": f"-c search_path={SCHEMA}"}
    )
)


@app.task(name="noop")
def noop() -> int:
    """Returns 1, as celeriac's task does (Procrastinate keeps no result)."""
    return 1
