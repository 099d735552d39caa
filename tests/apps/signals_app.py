"""The apps of ``tests/test_signals.py``: the same tasks and receivers on celeriac and on Celery.

Every receiver appends one JSON line to the file named by ``SIGNALS_LOG``:
which side (``celeriac`` or ``celery``), the signal, what kind of sender it
got, the names of its keyword arguments and the values of a few that say what
happened (``state``, ``expired``, ``how``...). The same receivers are connected
to ``celeriac.signals`` and to ``celery.signals``, so a real worker of each,
running the same tasks, writes records the test can compare: Celery is the
oracle for what each signal carries.

``app`` is the celeriac app (its broker from ``CELERIAC_BROKER_URL``);
``celery_app`` the Celery one, on the Redis of ``SIGNALS_CELERY_BROKER``,
consuming ``SIGNALS_QUEUE``, no result backend (the test reads the log).
A ``before_task_publish`` receiver on each side adds the ``x_signal`` header;
``header_echo`` records what the task sees of it in ``self.request.headers``.
Nothing is written, and no header added, unless ``SIGNALS_LOG`` is set: the
receivers stay connected in the test process once it imports this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery import signals as celery_signals

from celeriac import Celeriac
from celeriac import signals as celeriac_signals

QUEUE = os.environ.get("SIGNALS_QUEUE", "signals")

app = Celeriac("signals_app", task_default_queue=QUEUE)
celery_app = Celery(
    "signals_app",
    broker=os.environ.get("SIGNALS_CELERY_BROKER", "redis://127.0.0.1:6379/15"),
    set_as_current=False,
)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)

RECORDED = (
    "before_task_publish",
    "after_task_publish",
    "task_received",
    "task_prerun",
    "task_postrun",
    "task_success",
    "task_failure",
    "task_retry",
    "task_revoked",
    "task_unknown",
    "task_rejected",
    "celeryd_init",
    "celeryd_after_setup",
    "import_modules",
    "worker_init",
    "worker_before_create_process",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutting_down",
    "worker_shutdown",
    "after_setup_logger",
    "after_setup_task_logger",
)
"""The signals recorded (``setup_logging`` is connected by the test itself: connected,
it stops the configuration that sends the two ``after_setup_*``)."""

VALUES = ("state", "expired", "terminated", "sig", "how", "exitcode", "result", "name")
"""Arguments whose values are recorded too, when they are plain."""


def sender_kind(sender: object) -> str:
    """A sender as the two sides can agree on: a task by its name, else its kind."""
    if sender is None:
        return "none"
    if isinstance(sender, str):
        return "str"
    name = getattr(sender, "name", None)
    if isinstance(name, str) and hasattr(sender, "apply_async"):
        return f"task:{name}"
    return "object"


def write(record: dict[str, Any]) -> None:
    path = os.environ.get("SIGNALS_LOG")
    if path:
        with open(path, "a") as out:  # one short append per line: whole across processes
            out.write(json.dumps(record) + "\n")


def recorder(side: str, signal: str) -> Callable[..., None]:
    def record(sender: object = None, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        values = {
            k: kwargs[k]
            for k in VALUES
            if k in kwargs and isinstance(kwargs[k], str | int | float | bool | type(None))
        }
        write(
            {
                "side": side,
                "signal": signal,
                "sender": sender_kind(sender),
                "keys": sorted(kwargs),
                "values": values,
                "pid": os.getpid(),
            }
        )

    return record


def add_header(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is not None and os.environ.get("SIGNALS_LOG"):  # only in the test's processes
        headers["x_signal"] = "added by before_task_publish"


for side, module in (("celeriac", celeriac_signals), ("celery", celery_signals)):
    for signal_name in RECORDED:
        getattr(module, signal_name).connect(recorder(side, signal_name), weak=False)
    module.before_task_publish.connect(add_header)
app.on_after_fork.connect(recorder("celeriac", "on_after_fork"), weak=False)
celery_app.on_after_fork.connect(recorder("celery", "on_after_fork"), weak=False)


def add(x: int, y: int) -> int:
    return x + y


def boom() -> None:
    raise ValueError("boom")


def retry_once(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0, max_retries=1)
    return "retried"


def header_echo(self: Any) -> None:
    side = "celeriac" if isinstance(self.app, Celeriac) else "celery"
    headers = getattr(self.request, "headers", None) or {}
    write({"side": side, "signal": "header_echo", "values": {"x_signal": headers.get("x_signal")}})


for target in (app, celery_app):
    target.task(name="signals.add")(add)
    target.task(name="signals.boom")(boom)
    target.task(name="signals.retry_once", bind=True)(retry_once)
    target.task(name="signals.header_echo", bind=True)(header_echo)
