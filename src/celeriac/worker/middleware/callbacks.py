"""Links and chains: what a finished task sends next, as Celery protocol v2 says.

On success: each ``link`` callback gets the result as its first argument
(unless immutable), and the next step of ``chain`` (stored reversed in the
body) is sent with the rest of the chain. On failure: each ``link_error``
errback is sent with the failed task's id as its argument. Plain calls go
out in one batch; a next step that is a group or chord is sent as one.
"""

from __future__ import annotations

from typing import Any

from ... import states
from ...canvas import Signature
from ...execution import Outcome
from ...protocol import Outgoing
from ...sending import publish
from ..context import WorkerContext
from ..job import Job
from .base import Middleware


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
            await send_all(ctx, calls)
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
