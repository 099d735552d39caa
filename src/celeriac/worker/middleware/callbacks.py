"""Links and chains: what a finished task sends next, as Celery protocol v2 says.

On success: each ``link`` callback gets the result as its first argument
(unless immutable), and the next step of ``chain`` (stored reversed in the
body) is sent with the rest of the chain. On failure: each ``link_error``
errback is sent with the failed task's id as its argument.
"""

from __future__ import annotations

from typing import Any

from ... import states
from ...canvas import Signature
from ...execution import Outcome
from ...sending import SendOptions
from ..context import WorkerContext
from ..job import Job
from .base import Middleware


class Callbacks(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if outcome.state == states.SUCCESS:
            follow = [Signature[Any](s, app=ctx.app) for s in job.request.callbacks or ()]
            chain = list(job.request.chain or ())
            batch = [self._call(ctx, job, sig, (outcome.value,), None) for sig in follow]
            if chain:
                nxt = Signature[Any](chain.pop(), app=ctx.app)
                batch.append(self._call(ctx, job, nxt, (outcome.value,), chain or None))
        elif outcome.state == states.FAILURE:
            batch = [
                self._call(ctx, job, Signature(s, app=ctx.app), (job.id,), None, prepend=True)
                for s in job.request.errbacks or ()
            ]
        else:
            return outcome
        if batch:
            await ctx.app.asend_outgoing(batch)
        return outcome

    def _call(
        self,
        ctx: WorkerContext,
        job: Job,
        sig: Signature[Any],
        parent_result: tuple[Any, ...],
        chain: list[dict[str, Any]] | None,
        prepend: bool = False,
    ) -> Any:
        args = sig.args if sig.immutable and not prepend else [*parent_result, *sig.args]
        options = {**sig.options}
        opts = SendOptions.from_kwargs(options)
        opts.parent_id = job.id
        opts.root_id = job.request.root_id or job.id
        opts.chain = chain
        return ctx.app.build_outgoing(sig.task, args, sig.kwargs, opts, ctx.app.tasks.get(sig.task))
