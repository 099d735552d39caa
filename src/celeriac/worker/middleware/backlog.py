"""While autoscale is on, the node's voice measures the messages waiting in the
worker's queues (``Node.backlog``) every second, for the supervisor's autoscaler:
the supervisor itself opens no connections (``celeriac.worker.autoscale``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..context import WorkerContext
from .base import Middleware

logger = logging.getLogger("celeriac.worker")

INTERVAL = 1.0
"""Seconds between measures (Celery's autoscaler looks once a second too)."""


class Backlog(Middleware):
    def __init__(self) -> None:
        self._measuring: asyncio.Task[None] | None = None

    async def startup(self, ctx: WorkerContext) -> None:
        if ctx.is_voice and ctx.node.autoscale_bounds is not None:
            self._measuring = asyncio.get_running_loop().create_task(self._measure(ctx))

    async def shutdown(self, ctx: WorkerContext) -> None:
        if self._measuring is not None:
            self._measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._measuring

    async def _measure(self, ctx: WorkerContext) -> None:
        while True:
            try:
                broker = await ctx.connections.abroker()
                ready = [(await broker.stats(queue)).ready for queue in list(ctx.state.queues)]
                ctx.node.backlog = sum(ready)
            except Exception as exc:  # the consume loop reports a broker that is down
                logger.debug("cannot measure the queues for autoscale: %s", exc)
            await asyncio.sleep(INTERVAL)
