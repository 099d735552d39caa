"""Django: what Celery's Django integration does, and Django's transaction for ``app.transaction``.

A Celery project's ``proj/celery.py`` works with only the import changed::

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    app = Celeriac("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()

With DJANGO_SETTINGS_MODULE set when the app is made, :mod:`.fixup` is
installed: the worker calls ``django.setup()`` before it imports the task
modules, and sync tasks are :class:`DjangoTask`, which closes the worker
thread's stale database connections around each run. Every task has Celery's
``delay_on_commit`` and ``apply_async_on_commit`` (``celeriac.task.Task``).

* :mod:`.task`: :class:`DjangoTask`.
* :mod:`.fixup`: what a worker of a Django project does first.
* :mod:`.transactions`: :func:`atomic` (``transaction.atomic`` and
  ``app.transaction`` in one block) and :func:`database_url`.

Importing this package does not import Django.
"""

from .task import DjangoTask
from .transactions import atomic, database_url

__all__ = ["DjangoTask", "atomic", "database_url"]
