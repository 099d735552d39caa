"""``DjangoTask``: a sync task whose worker thread drops stale database connections.

Django closes a connection that is broken or older than CONN_MAX_AGE at
the start and end of each request (``close_old_connections``); a worker's
thread has no requests, so without this a connection the server closed
overnight fails the next task, and with ``CONN_MAX_AGE = 0`` (Django's
default) connections stay open between tasks. Celery does it from the
``task_prerun`` and ``task_postrun`` signals, which run in the thread of the
task there; celeriac sends them from the worker's event loop, while a sync
task runs in a thread of its own, and Django's connections belong to a
thread. So the task does it in its own thread, around :meth:`DjangoTask.run`.

Only a worker's runs of sync tasks do this: a direct call (``task(2, 2)``) or an eager
``apply()`` may be inside the caller's ``transaction.atomic()``, where closing
the connection would break it. The Django fixup makes this the class of every
sync task declared without ``base=`` (``celeriac.contrib.django.fixup``); a
``base=`` class of one's own gets it by subclassing this one.
"""

from __future__ import annotations

from typing import Any, ParamSpec, TypeVar

from ...task import Task

__all__ = ["DjangoTask"]

P = ParamSpec("P")
R = TypeVar("R")


class DjangoTask(Task[P, R]):
    """A task of a Django project (Celery's ``celery.contrib.django.task.DjangoTask``)."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or request.is_eager or self.is_async:
            return super().run(*args, **kwargs)
        from django.db import close_old_connections  # type: ignore[import-not-found, import-untyped, unused-ignore]

        close_old_connections()
        try:
            return super().run(*args, **kwargs)
        finally:
            close_old_connections()
