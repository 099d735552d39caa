"""The example project: importing it makes the task app, as in Celery's Django layout."""

from .celery import app as celery_app

__all__ = ("celery_app",)
