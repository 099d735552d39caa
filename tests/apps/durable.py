"""An app for worker-process tests: broker and results come from CELERIAC_* variables.

Every execution appends ``<id> <pid>`` to the file named by RUN_LOG, so a
test can count how often each task ran and in which process.
"""

from __future__ import annotations

import os
import time

from celeriac import Celeriac

app = Celeriac("durable")


def _log_run(task_id: str | None) -> None:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{task_id} {os.getpid()}\n")


@app.task(bind=True)
def work(self, n: int, seconds: float) -> int:  # type: ignore[no-untyped-def]
    """Sleeps, then records that it ran to the end."""
    time.sleep(seconds)
    _log_run(self.request.id)
    return n


@app.task(time_limit=1.0)
def spin() -> None:
    """Busy forever in Python: only the hard time limit stops it."""
    while True:
        sum(range(1000))


@app.task
def whoami() -> int:
    return os.getpid()


@app.task
def poison() -> None:
    """Kills the process that runs it, every time: a message that keeps killing workers."""
    os.kill(os.getpid(), 9)


@app.task
def fails_if_first(marker: str, seconds: float) -> str:
    """The first run (the one that creates ``marker``) sleeps, then raises; later runs succeed."""
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return "ok"
    time.sleep(seconds)
    raise RuntimeError("the first attempt failed, late")
