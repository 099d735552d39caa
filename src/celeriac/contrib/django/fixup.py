"""What a worker of a Django project does first (the part of Celery's Django fixup that matters).

Installed by ``Celeriac()`` when DJANGO_SETTINGS_MODULE is set, as Celery
installs its fixup:

* sync tasks declared without ``base=`` are :class:`~.task.DjangoTask` (the app's
  ``task_cls``), which closes stale database connections around each run;
* ``import_modules`` (the worker and beat, before they import the task modules):
  ``django.setup()``, so models load and ``autodiscover_tasks()`` finds the
  installed apps;
* ``worker_init`` (before the process pool forks): the process's database
  connections are closed, so no child inherits a socket another process uses.

Left out of Celery's: its system checks at start-up (``run_checks``; ``manage.py
check`` does that), CELERY_DB_REUSE_MAX (``close_old_connections`` follows
Django's own CONN_MAX_AGE instead) and closing the caches after each task.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ...signals import import_modules, worker_init
from .task import DjangoTask

if TYPE_CHECKING:
    from ...app import Celeriac

__all__ = ["install", "wanted"]

logger = logging.getLogger("celeriac")


def wanted() -> bool:
    """Whether a new app should get the fixup: DJANGO_SETTINGS_MODULE is set, and
    Django can be imported (otherwise a warning says so, as Celery's does)."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        import django  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        logger.warning(
            "DJANGO_SETTINGS_MODULE is set but Django is not installed: "
            "celeriac's Django fix-ups are not applied"
        )
        return False
    return True


def install(app: Celeriac) -> None:
    """Apply the fixup to ``app`` (module docstring)."""
    if app.task_cls is None:
        app.task_cls = DjangoTask
    import_modules.connect(_setup, sender=app)
    worker_init.connect(_close_connections, dispatch_uid="celeriac.contrib.django.fixup")


def _setup(**kwargs: Any) -> None:
    import django

    django.setup()


def _close_connections(**kwargs: Any) -> None:
    from django.db import connections  # type: ignore[import-not-found, import-untyped, unused-ignore]

    for conn in connections.all(initialized_only=True):
        conn.close()
