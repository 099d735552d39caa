"""An app for the revoke and autoscale tests: broker and results come from CELERIAC_* variables.

Each task appends ``<event> <id> <pid>`` lines to the file named by RUN_LOG:
``start`` when it begins, ``end`` when it ran to the end, ``stopped`` when an
exception raised inside it (a thread-pool terminate) ended it.
"""

from __future__ import annotations

import asyncio
import os
import time

from celeriac import Celeriac

app = Celeriac("revocable")


def _log(event: str, task_id: str | None) -> None:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{event} {task_id} {os.getpid()}\n")


@app.task(bind=True)
def nap(self, seconds: float) -> str:  # type: ignore[no-untyped-def]
    """Sleeps in 20 ms steps: Python runs between them, so an exception raised in its
    thread lands within a step (a single long ``time.sleep`` would finish first)."""
    _log("start", self.request.id)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.02)
    except BaseException:
        _log("stopped", self.request.id)
        raise
    _log("end", self.request.id)
    return "rested"


@app.task(bind=True)
async def anap(self, seconds: float) -> str:  # type: ignore[no-untyped-def]
    """The coroutine twin of ``nap``."""
    _log("start", self.request.id)
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        _log("stopped", self.request.id)
        raise
    _log("end", self.request.id)
    return "rested"


@app.task(acks_late=False)
def early() -> str:
    """Acknowledged before it runs (at most once)."""
    return "ran"
