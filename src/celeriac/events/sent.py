"""``task-sent``: the event a client sends for each task it publishes (``task_send_sent_event``).

Sent right after the publish, in the same call, as Celery's client does
(``celery.app.amqp``): a client has no background loop to flush a buffer
with (a sync ``delay()`` runs its loop only for the call). Its fields are
Celery's: the task's ``uuid``, ``root_id``, ``parent_id``, ``name``,
``args``/``kwargs`` (the message's ``argsrepr``/``kwargsrepr``), ``retries``,
``eta``, ``expires``, and where it went: ``queue``, ``exchange``,
``routing_key`` (the default exchange ``""`` and the queue's name, as Celery
reports a send to a queue by name, unless the route gave others). The sender
is ``gen<pid>@<host>``, the name Celery gives a client. The task is sent
whatever happens to its event: a failure is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from ..brokers.operations import Operations
from ..protocol import Outgoing
from .clock import process_clock
from .event import make_event

__all__ = ["send_task_sent", "task_sent_event"]

logger = logging.getLogger("celeriac.events")


def client_hostname() -> str:
    """Celery's name for a process that is not a worker (``anon_nodename``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_sent_event(outgoing: Outgoing, hostname: str) -> dict[str, Any]:
    headers = outgoing.message.headers
    route = outgoing.message.properties.get("delivery_info") or {}
    return make_event(
        "task-sent",
        hostname,
        process_clock(),
        {
            "uuid": headers.get("id"),
            "root_id": headers.get("root_id"),
            "parent_id": headers.get("parent_id"),
            "name": headers.get("task"),
            "args": headers.get("argsrepr"),
            "kwargs": headers.get("kwargsrepr"),
            "retries": headers.get("retries"),
            "eta": headers.get("eta"),
            "expires": headers.get("expires"),
            "queue": outgoing.queue,
            "exchange": route.get("exchange") or "",
            "routing_key": route.get("routing_key") or outgoing.queue,
        },
    )


async def send_task_sent(operations: Operations, batch: Sequence[Outgoing]) -> None:
    """Send a task-sent event for each published message; log, never raise, a failure."""
    hostname = client_hostname()
    try:
        await operations.send_events([task_sent_event(o, hostname) for o in batch])
    except Exception as exc:
        logger.warning("sent %d task(s) but not their task-sent events: %s", len(batch), exc)
