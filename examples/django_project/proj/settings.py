"""Settings of the example project: PostgreSQL ``test`` on 127.0.0.1, the tasks' broker in it.

The broker is the PostgreSQL broker in the application's own database, so a task
sent inside ``transaction.atomic()`` with ``app.transaction(connection)`` is a row
written in the view's transaction. ``DATABASE_NAME`` picks another database (the
tests start their worker on Django's test database with it).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
ROOT_URLCONF = "proj.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["orders"]

DATABASE_NAME = os.environ.get("DATABASE_NAME", "test")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DATABASE_NAME,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }
}

# celeriac reads the CELERY_-prefixed names (app.config_from_object(..., namespace="CELERY")).
CELERY_BROKER_URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE_NAME}"
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
