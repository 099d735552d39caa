"""The celeriac side of the Celery interop tests: broker and results from CELERIAC_* variables.

Task names are shared with :mod:`tests.apps.interop_celery`, so either
side's client can call the other side's worker.
"""

from __future__ import annotations

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
