"""The celeriac side of ``tests/test_events.py``: the tasks of :mod:`tests.apps.events_celery`.

``app`` takes its broker and result store from the ``CELERIAC_*`` variables
(worker processes); :func:`make_app` builds one on given URLs (thread workers).
"""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac
from celeriac.exceptions import Reject


def register(app: Celeriac) -> Celeriac:
    """``app`` with the four tasks, each making one kind of task event."""

    @app.task(name="events.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="events.boom")
    def boom() -> None:
        raise ValueError("boom")

    @app.task(name="events.flaky", bind=True)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0.1, exc=KeyError("once"))
        return "ok"

    @app.task(name="events.refuse")
    def refuse() -> None:
        raise Reject("no", requeue=False)

    return app


def make_app(broker: str, backend: str, **settings: Any) -> Celeriac:
    return register(
        Celeriac("events", broker=broker, backend=backend, set_as_current=False, **settings)
    )


app = register(Celeriac("events"))
