"""Chord completion: counted in the result store, fired exactly once.

A header task that succeeds marks its id done in the group's set; the call
that brings the count to ``chord_size`` also claims the chord and sends the
body with every header result, in group order. Counting distinct ids makes a
duplicate delivery harmless; the claim makes the body fire once even when
two workers see the full count. A header task that fails (for good: not a
retry) claims the chord instead and fails the body with :class:`ChordError`
naming the failing task; the body's errbacks get the body's id.
"""

from __future__ import annotations

from typing import Any

from ... import states
from ...backends.base import ResultMeta
from ...canvas import Signature, as_signature_list
from ...errors import ChordError
from ...execution import Outcome
from ..context import WorkerContext
from ..job import Job
from .base import Middleware
from .callbacks import send_all


class Chords(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        body, group_id = job.request.chord, job.request.group
        if not body or not group_id:
            return outcome
        if outcome.state == states.SUCCESS:
            await self._done(ctx, job, Signature.from_dict(body, ctx.app), group_id)
        elif outcome.state in (states.FAILURE, states.REJECTED, states.REVOKED):
            await self._failed(ctx, job, Signature.from_dict(body, ctx.app), group_id, outcome)
        return outcome

    async def _done(
        self, ctx: WorkerContext, job: Job, body: Signature[Any], group_id: str
    ) -> None:
        backend = await ctx.connections.abackend()
        done = await backend.mark_done(group_id, job.id)
        size = body.get("chord_size")
        ids: list[str] | None = None
        if not size:  # a Celery 5 client sends no chord_size: the saved group has the members
            ids = await backend.restore_group(group_id)
            size = len(ids) if ids else 0
        if not size or done < int(size):
            return
        if not await backend.claim(f"chord-{group_id}"):
            return
        ids = ids if ids is not None else await backend.restore_group(group_id)
        if ids is None:
            await self._fail_body(
                ctx, body, ChordError(f"chord {group_id}: its group was not saved")
            )
            return
        metas = await backend.get_many(ids)
        missing = [
            i for i, m in zip(ids, metas, strict=True) if m is None or m.status != states.SUCCESS
        ]
        if missing:
            await self._fail_body(
                ctx, body, ChordError(f"chord {group_id}: no result for {missing[0]}")
            )
            return
        values = [m.result for m in metas if m is not None]
        root = job.request.root_id or job.id
        await send_all(ctx, [body.clone((values,), parent_id=job.id, root_id=root)])

    async def _failed(
        self, ctx: WorkerContext, job: Job, body: Signature[Any], group_id: str, outcome: Outcome
    ) -> None:
        backend = await ctx.connections.abackend()
        if not await backend.claim(f"chord-{group_id}"):
            return
        error = ChordError(f"Dependency {job.id} raised {outcome.exc!r}")
        await self._fail_body(ctx, body, error)

    async def _fail_body(self, ctx: WorkerContext, body: Signature[Any], error: ChordError) -> None:
        backend = await ctx.connections.abackend()
        if body.id is not None:
            await backend.store(ResultMeta.of_error(body.id, states.FAILURE, error))
        listed = as_signature_list(body["options"].get("link_error"), ctx.app) or []
        errbacks = [Signature.from_dict(e, ctx.app) for e in listed]
        await send_all(ctx, [e.clone((body.id,), parent_id=body.id) for e in errbacks])
