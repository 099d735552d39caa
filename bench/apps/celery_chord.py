"""Celery on Redis for the chord benchmark; ``BENCH_REDIS_URL`` names the database."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

app = Celery("chordbench", broker=URL, backend=URL)


@app.task  # type: ignore[untyped-decorator]
def noop() -> int:
    return 1


@app.task  # type: ignore[untyped-decorator]
def count(results: list[int]) -> int:
    return len(results)
