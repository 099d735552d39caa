"""The celeriac side of the Celery interop tests: broker and results from CELERIAC_* variables.

Task names are shared with :mod:`tests.apps.interop_celery`, so either
side's client can call the other side's worker.
"""

from __future__ import annotations

import os

import redis

from celeriac import Celeriac

app = Celeriac("interop")


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(name="interop.tsum")
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


def _count(key: str) -> None:
    """INCR ``key`` in the result store's Redis, where a test reads it."""
    with redis.Redis.from_url(os.environ["CELERIAC_RESULT_BACKEND"]) as client:
        client.incr(key)


@app.task(name="interop.tally", bind=True)
def tally(self, numbers: list[int]) -> int:  # type: ignore[no-untyped-def]
    """``tsum`` that also counts its runs (``interop-runs-<id>``): a test sees a
    chord body that ran twice."""
    _count(f"interop-runs-{self.request.id}")
    return sum(numbers)


@app.task(name="interop.note_failure")
def note_failure(task_id: str) -> None:
    """An errback: counts the failures of ``task_id`` (``interop-failed-<id>``)."""
    _count(f"interop-failed-{task_id}")
