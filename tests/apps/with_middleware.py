"""An app whose worker runs the user's middleware: broker and results from CELERIAC_*.

Each hook appends one JSON line ``[name, hook, detail]`` to the file named by
MIDDLEWARE_LOG, so a test sees which hooks ran, in which order.
"""

from __future__ import annotations

import os

import orjson

from celeriac import Celeriac
from celeriac.brokers.base import Delivery
from celeriac.execution import Outcome
from celeriac.worker.context import WorkerContext
from celeriac.worker.job import Job
from celeriac.worker.middleware import Expiry, Middleware, Placement, Retries, Skip

app = Celeriac("with_middleware")


class FileRecorder(Middleware):
    def __init__(self, name: str = "last") -> None:
        self.name = name

    def _log(self, hook: str, detail: str) -> None:
        with open(os.environ["MIDDLEWARE_LOG"], "ab") as log:
            log.write(orjson.dumps([self.name, hook, detail]) + b"\n")

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | None:
        self._log("before_task", job.name)
        return None

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        self._log("after_task", f"{job.name} {outcome.state}")
        return outcome

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        self._log("dead_lettered", reason)


app.conf.worker_middleware = [
    Placement(FileRecorder("first"), before=Expiry),
    Placement(FileRecorder("after_retries"), after=Retries),
    FileRecorder,  # a class: one instance per worker process, at the end
]


@app.task(autoretry_for=(ValueError,), retry_kwargs={"countdown": 0, "max_retries": 1})
def flaky() -> None:
    raise ValueError("always")


@app.task
def add(x: int, y: int) -> int:
    return x + y
