"""An app for the Tasks guide's worker-process tests (``tests/test_task_guide.py``):
broker and results come from CELERIAC_* variables.

Handlers append ``<handler> <task id> <pid>`` to the file named by RUN_LOG, so
a test sees which process called them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celeriac import Celeriac, Task

app = Celeriac("task_guide")


def _log(*fields: object) -> None:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(" ".join(str(f) for f in fields) + "\n")


class Logged(Task[Any, Any]):
    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        _log("on_success", task_id, os.getpid())

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        _log("after_return", task_id, os.getpid())


@app.task(bind=True, base=Logged, name="guide.progress")
def progress(self: Task[[int, str], int], n: int, gate: str) -> int:
    """The guide's progress pattern; waits at the last step until ``gate`` exists."""
    for i in range(n):
        if not self.request.called_directly:
            self.update_state(state="PROGRESS", meta={"current": i, "total": n, "pid": os.getpid()})
    while not Path(gate).exists():
        time.sleep(0.01)
    return n
