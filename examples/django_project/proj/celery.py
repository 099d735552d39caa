"""The project's task app: Celery's ``proj/celery.py`` with only the import changed.

Start a worker from this directory: ``celeriac -A proj worker``.
"""

import os

from celeriac import Celeriac

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celeriac("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
