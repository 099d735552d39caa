"""A Celery 5 app for the remote-control interop tests: ``celery -A tests.apps.control_celery
inspect ping`` (or ``worker``) on the broker named by ``CONTROL_BROKER``, with kombu's
``global_keyprefix`` from ``CONTROL_PREFIX`` (Redis) when given."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("control_interop", broker=os.environ["CONTROL_BROKER"])
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
if os.environ.get("CONTROL_PREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["CONTROL_PREFIX"]}
