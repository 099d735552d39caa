"""Chord completion: each header task's final state goes to the result store,
and the one call that completes the chord sends the body, exactly once.

The store owns the counting (``ResultBackend.chord_part_return``): it records
the part, ignores a duplicate of one it has, and hands the join (the header's
values in group order, or why the body must fail) to the one call that
completed the chord. On Redis that is Celery's own protocol, so Celery and
celeriac workers complete each other's chords. This module only acts on it:
it sends the body with the values, or fails the body with the join's
:class:`ChordError` and sends the body's errbacks the body's id, as Celery does.
"""

from __future__ import annotations

from typing import Any

from ... import states
from ...backends.base import ChordJoin, ResultBackend, ResultMeta
from ...canvas import Signature, as_signature_list
from ...errors import CeleriacError, ChordError, MessageTooLarge
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Middleware
from .callbacks import send_all


class Chords(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        body, group_id = job.request.chord, job.request.group
        if not body or not group_id or not _final(outcome):
            return outcome
        backend = await ctx.connections.abackend()
        join = await backend.chord_part_return(
            group_id, job.request.group_index, _part(job, outcome)
        )
        if join is not None:
            await self._complete(ctx, job, backend, Signature.from_dict(body, ctx.app), join)
        return outcome

    async def _complete(
        self,
        ctx: WorkerContext,
        job: Job,
        backend: ResultBackend,
        body: Signature[Any],
        join: ChordJoin,
    ) -> None:
        if join.error is not None:
            await _fail_body(ctx, backend, body, join.error)
        elif await backend.hold_chord(join):
            root = job.request.root_id or job.id
            try:
                await send_all(ctx, [body.clone((join.values,), parent_id=job.id, root_id=root)])
            except MessageTooLarge as exc:
                await _fail_body(ctx, backend, body, ChordError(f"Callback error: {exc!r}"))
        else:
            return  # the chord's lease lapsed and another worker took it over
        await backend.release_chord(join)


def _final(outcome: Outcome) -> bool:
    """A state the header task ends in (a retry or a requeue is not)."""
    if outcome.state == states.REJECTED:
        return not outcome.requeue
    return outcome.state in (states.SUCCESS, states.FAILURE, states.REVOKED)


def _part(job: Job, outcome: Outcome) -> ResultMeta:
    if outcome.state == states.SUCCESS:
        return ResultMeta(job.id, states.SUCCESS, outcome.value)
    error = outcome.exc or CeleriacError(f"the task ended {outcome.state}")
    return ResultMeta.of_error(job.id, outcome.state, error, outcome.traceback)


async def _fail_body(
    ctx: WorkerContext, backend: ResultBackend, body: Signature[Any], error: ChordError
) -> None:
    """Store ``error`` as the body's result and send its errbacks the body's id."""
    if body.id is not None:
        await backend.store(ResultMeta.of_error(body.id, states.FAILURE, error))
    listed = as_signature_list(body["options"].get("link_error"), ctx.app) or []
    errbacks = [Signature.from_dict(e, ctx.app) for e in listed]
    await send_all(ctx, [e.clone((body.id,), parent_id=body.id) for e in errbacks])
