"""An app for the outbox tests: broker, result store and ``outbox_url`` come from CELERIAC_*
variables (``outbox_poll_interval`` too, as a SQLite user would lower it).

Every execution of ``record`` appends ``<id>`` to the file named by RUN_LOG, so a
test counts how often each committed task ran.
"""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac("outbox_app")


@app.task(bind=True)
def record(self, n: int) -> int:  # type: ignore[no-untyped-def]
    """Records that it ran (one short append: lines of concurrent runs never mix)."""
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{self.request.id}\n")
    return n
