"""Remote control: the worker's end of Celery's pidbox.

Every process of a worker serves its node link (``node_link.py``); the
node's voice (slot 0) alone also listens to the mailbox for the worker's
hostname. For each command it keeps only those addressed to it
(``destination``, or ``pattern`` + ``matcher``) and not expired (the
``expires`` header: the sender has stopped waiting), runs the command
(``control_commands.py``) and, when the sender wants replies, sends
``{hostname: answer}`` to its ``reply_to`` with its ``ticket``. An unknown
command or a failing one is answered ``{"error": repr(exc)}``, as kombu's
``kombu.pidbox.Node.dispatch`` does. Commands run one at a time, in the order sent.

A lost connection to the broker is retried with a backoff, as the consume
loop does; the commands sent meanwhile are lost (Celery's mailbox queues are
not durable either).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from typing import Any

from ..brokers.operations import Operations, Received, Subscription
from ..control.mailbox import addressed_to, clock, expired
from ..errors import BrokerError
from .context import WorkerContext
from .control_commands import COMMANDS, NO_REPLY, Panel
from .local_operations import run_local
from .middleware.base import Middleware
from .node_link import NodeLink

__all__ = ["RemoteControl"]

logger = logging.getLogger("celeriac.worker")


class RemoteControl(Middleware):
    """Answers ``celery inspect`` / ``celery control`` (and ``celeriac``'s) for the node."""

    def __init__(self) -> None:
        self._link: NodeLink | None = None
        self._listener: asyncio.Task[None] | None = None

    async def startup(self, ctx: WorkerContext) -> None:
        self._link = NodeLink(ctx.node, ctx.slot, functools.partial(run_local, ctx))
        await self._link.start()
        if ctx.is_voice:
            operations = (await ctx.connections.abroker()).operations()
            subscription: Subscription | None = None
            try:
                subscription = await operations.subscribe_commands(ctx.hostname)  # listening now
            except BrokerError as exc:  # tasks run without remote control; it keeps trying
                logger.error("remote control is off for now: %s", exc)
            panel = Panel(ctx, self._link)
            loop = asyncio.get_running_loop()
            self._listener = loop.create_task(self._listen(panel, operations, subscription))

    async def shutdown(self, ctx: WorkerContext) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._link is not None:
            await self._link.close()

    async def _listen(
        self, panel: Panel, operations: Operations, subscription: Subscription | None
    ) -> None:
        backoff = 0.1
        while True:
            try:
                if subscription is None:
                    subscription = await operations.subscribe_commands(panel.ctx.hostname)
                async with subscription:
                    async for received in subscription:
                        await self._handle(panel, operations, received)
                        backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.error("remote control: %s; listening again in ~%.1fs", exc, backoff)
            subscription = None
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 30.0)

    async def _handle(self, panel: Panel, operations: Operations, received: Received) -> None:
        command, hostname = received.body, panel.ctx.hostname
        if not addressed_to(hostname, command) or expired(received.headers):
            return
        method = str(command.get("method"))
        answer = await dispatch(panel, method, command.get("arguments") or {})
        reply_to = command.get("reply_to")
        if reply_to and answer is not NO_REPLY:
            headers = {"ticket": command.get("ticket"), "clock": clock()}
            await operations.send_reply(reply_to, {hostname: answer}, headers)


async def dispatch(panel: Panel, method: str, arguments: dict[str, Any]) -> Any:
    """Run one command; an unknown or failing one answers ``{"error": repr(exc)}``."""
    handler = COMMANDS.get(method)
    if handler is None:
        logger.warning("no such remote control command: %s", method)
        return {"error": repr(KeyError(method))}
    try:
        return await handler(panel, **arguments)
    except Exception as exc:
        logger.error("remote control command %s failed: %r", method, exc)
        return {"error": repr(exc)}
