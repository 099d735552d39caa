"""An app for shutdown-signal tests: broker and results come from CELERIAC_* variables.

``step`` appends ``start <id> <pid>`` to the file named by RUN_LOG when it
begins and ``end <id> <pid>`` when it returns, so a test can tell which tasks
were running when it sent a signal.

With CHILD_START_DELAY set, every process forked from the worker (each
process-pool child) writes ``forked <pid>`` to RUN_LOG and then sleeps that
many seconds, then writes ``unheld <pid>``, before any worker code runs in it:
the window between the fork and the child's own signal handlers, held open
for a test to signal into.
"""

from __future__ import annotations

import os
import time

from celeriac import Celeriac

app = Celeriac("shutdown")


def _log(event: str, task_id: str | None) -> None:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{event} {task_id} {os.getpid()}\n")


@app.task(bind=True)
def step(self, n: int, seconds: float) -> int:  # type: ignore[no-untyped-def]
    """Records its start, sleeps, records its end."""
    _log("start", self.request.id)
    time.sleep(seconds)
    _log("end", self.request.id)
    return n


def _hold_after_fork() -> None:
    _log("forked", None)
    time.sleep(float(os.environ["CHILD_START_DELAY"]))
    _log("unheld", None)


if os.environ.get("CHILD_START_DELAY"):
    os.register_at_fork(after_in_child=_hold_after_fork)
