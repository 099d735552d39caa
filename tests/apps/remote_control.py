"""An app for the remote-control tests: broker and results from CELERIAC_* variables.

``hold`` writes ``<dir>/<task id>`` (with its pid) when it starts and runs until
``<dir>/release`` exists, so a test can see tasks running in known processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celeriac

app = Celeriac("remote_control")


@app.task(bind=True)
def hold(self, directory: str, seconds: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    """Runs until ``<directory>/release`` exists (at most ``seconds``); returns its pid."""
    Path(directory, str(self.request.id)).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while not Path(directory, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.getpid()


@app.task
def stamp() -> float:
    """When it ran."""
    return time.time()


@app.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"
