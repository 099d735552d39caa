# The tasks of Celery's guides, as written there (Next Steps, Tasks, Calling, Canvas).
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .celery import app


# -- Next Steps: proj/tasks.py ----------------------------------------------
@app.task
def add(x: Any, y: Any) -> Any:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


# -- Canvas guide ---------------------------------------------------------------
@app.task
def tsum(numbers: list[int]) -> int:
    return sum(numbers)


# -- Tasks guide: "Custom states", with a gate the test opens ------------------
@app.task(bind=True)
def upload_files(self: Any, filenames: list[str]) -> None:
    for i, file in enumerate(filenames):
        if not self.request.called_directly:
            self.update_state(state="PROGRESS", meta={"current": i, "total": len(filenames)})
        gate = Path(file)
        while not gate.exists() and not self.request.called_directly:
            time.sleep(0.01)


# -- Tasks guide: "Example" of bind=True and the request ---------------------
@app.task(bind=True)
def dump_context(self: Any, x: int, y: int) -> str:
    return "Executing task id {0.id}, args: {0.args!r} kwargs: {0.kwargs!r}".format(  # noqa: UP032 - as the guide writes it
        self.request
    )


# -- Tasks guide: retrying -----------------------------------------------------
class TransientError(Exception):
    pass


@app.task(bind=True, default_retry_delay=30 * 60)
def retry_once(self: Any, marker: str) -> int:
    try:
        if not Path(marker).exists():
            Path(marker).touch()
            raise TransientError("first time fails")
    except TransientError as exc:
        # overrides the default delay to retry after 1 second (the guide says 60)
        raise self.retry(exc=exc, countdown=1) from exc
    return int(self.request.retries)


@app.task(autoretry_for=(TransientError,), retry_kwargs={"max_retries": 2}, default_retry_delay=0)
def always_fails() -> None:
    raise TransientError("never works")


# -- Calling guide: "Linking (callbacks/errbacks)" -----------------------------
@app.task
def error_handler(request: Any, exc: BaseException, traceback: Any) -> None:
    Path(os.environ["DOCS_ERRBACK_LOG"]).write_text(
        "Task {0} raised exception: {1!r}".format(request.id, exc)  # noqa: UP030, UP032 - the guide's
    )


@app.task
def fails() -> None:
    raise ValueError("Something went wrong")
