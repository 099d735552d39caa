"""A delivery decoded into a job: the task, its request and its limits.

Anything that is not a valid protocol v2 message for a registered task
raises :class:`Undeliverable`, and the consumer dead-letters it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..brokers.base import Delivery
from ..errors import (
    CeleriacError,
    MessageError,
    MessageTooLarge,
    NotRegistered,
    SerializationError,
)
from ..protocol import Message, TaskBody, check_headers, parse_timestamp
from ..request import Request
from ..sending import check_message_size
from ..serialization import Codec
from ..task import Task

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["Job", "Undeliverable", "decode_job"]


class Undeliverable(CeleriacError):
    """A message no task can run: it goes to the dead-letter store."""


@dataclass(slots=True)
class Job:
    delivery: Delivery
    task: Task[Any, Any]
    request: Request
    body: TaskBody
    id: str
    """The task's id (``request.id``)."""
    name: str
    """The task's name (``request.task``)."""
    soft_limit: float | None = None
    hard_limit: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """Scratch space for middleware (timings, tokens)."""

    @property
    def message(self) -> Message:
        return self.delivery.message

    def expired(self, now: float | None = None) -> bool:
        """Whether the task's ``expires`` time has passed (at ``now``, unix seconds)."""
        if self.request.expires is None:
            return False
        expires = parse_timestamp(self.request.expires)
        return expires is not None and (time.time() if now is None else now) > expires


def decode_job(app: Celeriac, codec: Codec, delivery: Delivery, hostname: str) -> Job:
    message = delivery.message
    headers = message.headers
    try:
        check_headers(headers)
        # before decoding: this worker's limit, whatever the sender's was
        check_message_size(app.conf.task_message_max_size, headers["task"], message.body)
        payload = codec.loads(message.body, message.content_type)
        body = TaskBody.from_payload(payload)
    except (MessageError, MessageTooLarge, SerializationError) as exc:
        raise Undeliverable(str(exc)) from exc
    name = str(headers["task"])
    try:
        task = app.get_task(name)
    except NotRegistered as exc:
        raise Undeliverable(f"unknown task {name!r}: {exc}") from exc
    timelimit = headers.get("timelimit") or (None, None)
    hard = _seconds(timelimit[0]) or task.time_limit
    soft = _seconds(timelimit[1]) or task.soft_time_limit
    task_id = str(headers["id"])
    request = Request(
        id=task_id,
        task=name,
        args=list(body.args),
        kwargs=body.kwargs,
        retries=int(headers.get("retries") or 0),
        eta=headers.get("eta"),
        expires=headers.get("expires"),
        hostname=hostname,
        origin=headers.get("origin"),
        root_id=headers.get("root_id"),
        parent_id=headers.get("parent_id"),
        group=headers.get("group"),
        group_index=headers.get("group_index"),
        callbacks=body.callbacks,
        errbacks=body.errbacks,
        chain=body.chain,
        chord=body.chord,
        headers=dict(headers),
        delivery_info={
            "routing_key": delivery.queue,
            "exchange": "",
            "priority": message.priority,
            "redelivered": delivery.delivery_count > 1,
        },
        reply_to=message.properties.get("reply_to") or None,
        correlation_id=message.properties.get("correlation_id") or None,
        timelimit=(hard, soft),
        ignore_result=bool(headers.get("ignore_result")) or task.ignore_result,
        delivery_count=delivery.delivery_count,
        called_directly=False,
    )
    return Job(delivery, task, request, body, task_id, name, soft_limit=soft, hard_limit=hard)


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
