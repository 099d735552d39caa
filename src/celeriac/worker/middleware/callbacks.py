"""Links and chains: what a finished task sends next, as Celery protocol v2 says.

On success: each ``link`` callback gets the result as its first argument
(unless immutable), and the next step of ``chain`` (stored reversed in the
body) is sent with the rest of the chain. On failure: each ``link_error``
errback is sent with the failed task's id as its argument. Plain calls go
out in one batch; a next step that is a group or chord is sent as one.
When what follows cannot be sent (over ``task_message_max_size``), each step
of it with an id is stored as FAILURE, so a caller waiting on the chain hears
why it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import states
from ...backends.base import ResultMeta
from ...canvas import Signature
from ...errors import MessageTooLarge
from ...execution import Outcome
from ...protocol import Outgoing
from ...sending import publish
from ..context import WorkerContext
from ..job import Job
from .base import Middleware

logger = logging.getLogger("celeriac.worker")


class Callbacks(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        request = job.request
        if outcome.state == states.SUCCESS:
            calls = [self._next(ctx, job, s, (outcome.value,)) for s in request.callbacks or ()]
            chain = list(request.chain or ())
            if chain:
                step = chain.pop()
                calls.append(self._next(ctx, job, step, (outcome.value,), chain=chain or None))
        elif outcome.state == states.FAILURE:
            calls = [self._next(ctx, job, s, (job.id,)) for s in request.errbacks or ()]
        else:
            return outcome
        if calls:
            try:
                await send_all(ctx, calls)
            except MessageTooLarge as exc:
                await _never_run(ctx, job, calls, exc)
        return outcome

    def _next(
        self,
        ctx: WorkerContext,
        job: Job,
        data: dict[str, Any],
        args: tuple[Any, ...],
        *,
        chain: list[dict[str, Any]] | None = None,
    ) -> Signature[Any]:
        sig = Signature.from_dict(data, ctx.app)
        root = job.request.root_id or job.id
        return sig.clone(args, parent_id=job.id, root_id=root, chain=chain)


async def _never_run(
    ctx: WorkerContext, job: Job, calls: list[Signature[Any]], error: MessageTooLarge
) -> None:
    """What follows ``job`` cannot be sent: each step of it that has an id (and so
    may have a caller waiting) is stored as FAILURE with ``error``."""
    logger.error("%s[%s] could not send what follows: %s", job.name, job.id, error)
    ids = [c["options"].get("task_id") for c in calls]
    ids += [step.get("options", {}).get("task_id") for step in job.request.chain or ()]
    backend = await ctx.connections.abackend()
    for task_id in ids:
        if isinstance(task_id, str):
            await backend.store(ResultMeta.of_error(task_id, states.FAILURE, error))


async def send_all(ctx: WorkerContext, calls: list[Signature[Any]]) -> None:
    """Plain task calls in one publish; flows (groups, chords) each as their own."""
    batch: list[Outgoing] = []
    for call in calls:
        if call.is_plain:
            batch.append(call.outgoing(ctx.app))
        else:
            await call.asend(ctx.app)
    if batch:
        await publish(ctx.app, batch)
