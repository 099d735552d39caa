"""Links and chains: what a finished task sends next, as Celery protocol v2 says.

Two middleware, at the two places Celery's worker sends them:

- :class:`Callbacks`, on success, *before* the result is stored: each ``link``
  callback gets the result as its first argument (unless immutable), and
  the next step of ``chain`` (stored reversed in the body) is sent with the
  rest of the chain. What it sends is recorded in the request's
  ``children``, so the stored result lists it (``AsyncResult.children``).
  A result they cannot serialize fails the task instead, as in Celery.
- :class:`Errbacks`, on failure, *after* the result is stored (so an errback
  can read it): a ``link_error`` errback that takes Celery's ``(request,
  exc, traceback)`` runs in the worker (``handlers.errbacks_to_send``); each
  other one is sent with the failed task's id as its argument.

Plain calls go out in one batch; a next step that is a group or chord is
sent as one. When what follows cannot be sent (over
``task_message_max_size``), each step of it with an id is stored as FAILURE,
so a caller waiting on the chain hears why it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import states
from ...backends.base import ResultMeta
from ...canvas import Signature
from ...errors import MessageTooLarge, SerializationError
from ...execution import Outcome
from ...protocol import Outgoing
from ...result import AsyncResult, GroupResult
from ...sending import publish
from ..context import WorkerContext
from ..job import Job
from .base import Middleware
from .handlers import errbacks_to_send

logger = logging.getLogger("celeriac.worker")


class Callbacks(Middleware):
    """On success: the ``link`` callbacks and the chain's next step, as children."""

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if outcome.state != states.SUCCESS:
            return outcome
        request = job.request
        calls = [_next(ctx, job, s, (outcome.value,)) for s in request.callbacks or ()]
        chain = list(request.chain or ())
        if chain:
            step = chain.pop()
            calls.append(_next(ctx, job, step, (outcome.value,), chain=chain or None))
        try:
            job.request.children.extend(await _send(ctx, job, calls))
        except SerializationError as exc:  # as Celery: a value they cannot carry fails the task
            logger.error("%s[%s] could not send what follows: %s", job.name, job.id, exc)
            return Outcome(states.FAILURE, exc=exc, runtime=outcome.runtime)
        return outcome


class Errbacks(Middleware):
    """On failure: the ``link_error`` errbacks, run here or sent with the task's id."""

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if outcome.state == states.FAILURE:
            errbacks = await errbacks_to_send(ctx, job, outcome)  # the rest run here
            await _send(ctx, job, [_next(ctx, job, s, (job.id,)) for s in errbacks])
        return outcome


def _next(
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


async def _send(ctx: WorkerContext, job: Job, calls: list[Signature[Any]]) -> list[str]:
    """Send what follows ``job``; the ids sent (none when it could not be sent)."""
    if not calls:
        return []
    try:
        return await send_all(ctx, calls)
    except MessageTooLarge as exc:
        await _never_run(ctx, job, calls, exc)
        return []


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


async def send_all(ctx: WorkerContext, calls: list[Signature[Any]]) -> list[str]:
    """Plain task calls in one publish; flows (groups, chords) each as their own.
    Returns the ids of the tasks sent (of a flow, those it starts with)."""
    batch: list[Outgoing] = []
    sent: list[str] = []
    for call in calls:
        if call.is_plain:
            batch.append(call.outgoing(ctx.app))
        else:
            sent.extend(_ids(await call.asend(ctx.app)))
    if batch:
        await publish(ctx.app, batch)
    return [o.message.id for o in batch] + sent


def _ids(result: AsyncResult[Any] | GroupResult) -> list[str]:
    """The tasks a flow's send started: a chain's first (``result`` is its last, with
    ``parent`` links back), a group's members, a chord's header members."""
    first = result
    while first.parent is not None:
        first = first.parent
    return [r.id for r in first.results] if isinstance(first, GroupResult) else [first.id]
