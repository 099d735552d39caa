"""Monitoring events, as a Celery worker sends them (``celery.worker.request``/``heartbeat``).

Task events, when ``worker_send_task_events`` is on (``celeriac worker -E``):
``task-received`` once the message is accepted for running (after expiry,
revoke and rate-limit checks, as Celery sends it only for a task it will
run), ``task-started``, then one of ``task-succeeded`` (``result``: its repr,
``runtime``), ``task-failed`` (``exception``, ``traceback``),
``task-retried``, ``task-revoked`` (``terminated``, ``signum``, ``expired``)
or ``task-rejected`` (``requeue``). As in Celery with late acks: a task that
rejects its message without requeue is a ``task-failed``, then, as every
dead-lettered message, a ``task-rejected`` with ``requeue=False``; an unknown
task is a ``task-failed`` with ``NotRegistered``.

Worker events, always (a Celery worker sends them without ``-E`` too): the
node's voice process (slot 0) sends ``worker-online`` at start,
``worker-heartbeat`` every ``HEARTBEAT_INTERVAL`` seconds and
``worker-offline`` at shutdown, with the node's ``active`` and ``processed``
totals over every process.

Events go through an :class:`~celeriac.events.EventDispatcher`: a bounded
buffer flushed in the background, so no task ever waits for one. With task
events off, the task hooks return at the first test.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ... import states
from ...brokers.base import Delivery
from ...errors import NotRegistered, Retry
from ...events.dispatcher import EventDispatcher
from ...events.event import SOFTWARE_INFO, load_average, short_repr
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from ..revokes import terminated_by
from .base import Defer, Middleware, Skip

__all__ = ["HEARTBEAT_INTERVAL", "Events"]

HEARTBEAT_INTERVAL = 2.0
"""Seconds between two worker-heartbeat events (Celery's default ``freq``)."""


class Events(Middleware):
    def __init__(self, heartbeat_interval: float = HEARTBEAT_INTERVAL):
        self.heartbeat_interval = heartbeat_interval
        self.dispatcher: EventDispatcher | None = None
        self._heart: asyncio.Task[None] | None = None

    async def startup(self, ctx: WorkerContext) -> None:
        if ctx.state.task_events or ctx.is_voice:
            await self._open(ctx)
        if ctx.is_voice:
            self._worker_event(ctx, "worker-online")
            ctx.state.send_heartbeat = lambda: self._worker_event(ctx, "worker-heartbeat")
            self._heart = asyncio.get_running_loop().create_task(self._beat(ctx))

    async def _open(self, ctx: WorkerContext) -> None:
        """Start the dispatcher."""
        conf = ctx.app.conf
        broker = await ctx.connections.abroker()
        self.dispatcher = EventDispatcher(
            broker.operations(), ctx.hostname, buffer_limit=conf.event_buffer_limit
        )
        self.dispatcher.start()

    async def _tasks(self, ctx: WorkerContext) -> EventDispatcher | None:
        """The dispatcher when task events are on (opened the first time), else None."""
        if not ctx.state.task_events:
            return None
        if self.dispatcher is None:
            await self._open(ctx)
        return self.dispatcher

    async def shutdown(self, ctx: WorkerContext) -> None:
        if self._heart is not None:
            self._heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heart
            self._worker_event(ctx, "worker-offline")
        if self.dispatcher is not None:
            await self.dispatcher.close()

    async def _beat(self, ctx: WorkerContext) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self._worker_event(ctx, "worker-heartbeat")

    def _worker_event(self, ctx: WorkerContext, type_: str) -> None:
        assert self.dispatcher is not None
        totals = ctx.node.totals()
        self.dispatcher.send(
            type_,
            freq=self.heartbeat_interval,
            active=totals.active,
            processed=totals.processed,
            loadavg=load_average(),
            **SOFTWARE_INFO,
        )

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        if (dispatcher := await self._tasks(ctx)) is not None:
            headers = job.message.headers
            dispatcher.send(
                "task-received",
                uuid=job.id,
                name=job.name,
                args=headers.get("argsrepr"),
                kwargs=headers.get("kwargsrepr"),
                root_id=job.request.root_id,
                parent_id=job.request.parent_id,
                retries=job.request.retries,
                eta=job.request.eta,
                expires=job.request.expires,
            )
        return None

    async def task_started(self, ctx: WorkerContext, job: Job) -> None:
        if (dispatcher := await self._tasks(ctx)) is not None:
            dispatcher.send("task-started", uuid=job.id)

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if (dispatcher := await self._tasks(ctx)) is not None:
            fields = _outcome_fields(job, outcome)
            if fields is not None:
                dispatcher.send(fields.pop("type"), uuid=job.id, **fields)
        return outcome

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        task_id = delivery.message.headers.get("id")
        dispatcher = await self._tasks(ctx)
        if dispatcher is None or not task_id:
            return
        if isinstance(cause, NotRegistered):
            name = delivery.message.headers.get("task")
            dispatcher.send("task-failed", uuid=task_id, exception=f"NotRegistered({name!r})")
        else:
            dispatcher.send("task-rejected", uuid=task_id, requeue=False)


def _outcome_fields(job: Job, outcome: Outcome) -> dict[str, Any] | None:
    """The event an outcome makes (its ``type`` and fields), or None for none."""
    state = outcome.state
    if state == states.SUCCESS:
        return {
            "type": "task-succeeded",
            "result": short_repr(outcome.value),
            "runtime": outcome.runtime,
        }
    if state == states.FAILURE or (state == states.REJECTED and not outcome.requeue):
        # A rejected task fails for good; its dead letter is the task-rejected (as Celery).
        return {
            "type": "task-failed",
            "exception": short_repr(outcome.exc),
            "traceback": outcome.traceback,
        }
    if state == states.RETRY:
        cause = outcome.exc.exc if isinstance(outcome.exc, Retry) else outcome.exc
        return {
            "type": "task-retried",
            "exception": short_repr(cause),
            "traceback": outcome.traceback or "",
        }
    if state == states.REVOKED:
        signum = terminated_by(job)
        return {
            "type": "task-revoked",
            "terminated": signum is not None,
            "signum": signum,
            "expired": job.expired(),
        }
    if state == states.REJECTED:
        return {"type": "task-rejected", "requeue": True}
    return None
