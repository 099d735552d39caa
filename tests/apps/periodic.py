"""An app for the beat tests: broker and results come from CELERIAC_* variables.

Its one entry sends ``tick`` every second; each run appends ``<id> <pid>`` to
the file named by RUN_LOG (a worker with ``-B`` runs what its beat sends).
"""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac("periodic")
app.conf.beat_schedule = {
    "every-second": {"task": "tests.apps.periodic.tick", "schedule": 1.0},
}


@app.task(bind=True)
def tick(self) -> None:  # type: ignore[no-untyped-def]
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{self.request.id} {os.getpid()}\n")
