"""What each process of a worker does or reports for itself (the :data:`LOCAL` table).

The node's voice runs these here and in every sibling (``NodeLink.gather``)
and merges the answers into one (``control_commands.py``): the tasks each
process runs and holds, its counters and usage, and the changes that must
reach every process: revokes, rate and time limits (set on the process's own
task registry), the queues consumed. Arguments and answers are JSON.
"""

from __future__ import annotations

import resource
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .context import WorkerContext
from .process_state import job_info

__all__ = ["FOLLOW", "LOCAL", "run_local"]

FOLLOW = 0.7
"""Seconds a process waits for its consume loop to take up a change of queues (it does
between two fetches, at most ``FETCH_TIMEOUT`` apart); the voice waits a little longer
for its siblings, and answers within a client's default timeout of 1 s."""

LOCAL: dict[str, Callable[..., Awaitable[Any]]] = {}


def _local(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    LOCAL[fn.__name__.removeprefix("_local_")] = fn
    return fn


async def run_local(ctx: WorkerContext, op: str, args: Mapping[str, Any]) -> Any:
    """One :data:`LOCAL` operation in this process (``NodeLink``'s handler)."""
    return await LOCAL[op](ctx, **args)


@_local
async def _local_active(ctx: WorkerContext, safe: bool = False) -> list[dict[str, Any]]:
    state = ctx.state
    return [job_info(job, state.time_start.get(i), safe) for i, job in list(state.active.items())]


@_local
async def _local_reserved(ctx: WorkerContext) -> list[dict[str, Any]]:
    return [job_info(job, None) for job in list(ctx.state.reserved.values())]


@_local
async def _local_query(ctx: WorkerContext, ids: list[str]) -> dict[str, Any]:
    state, found = ctx.state, {}
    for task_id in ids:
        if task_id in state.active:
            started = state.time_start.get(task_id)
            found[task_id] = ["active", job_info(state.active[task_id], started)]
        elif task_id in state.reserved:
            found[task_id] = ["reserved", job_info(state.reserved[task_id], None)]
    return found


@_local
async def _local_stats(ctx: WorkerContext) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields = [name for name in dir(usage) if name.startswith("ru_")]
    return {
        "total": dict(ctx.state.totals),
        "rusage": {name.removeprefix("ru_"): getattr(usage, name) for name in fields},
    }


@_local
async def _local_revoke(
    ctx: WorkerContext, ids: list[str], terminate: bool, signal: str, until: float
) -> list[str]:
    return await ctx.revokes.revoke(ids, terminate=terminate, signal=signal, until=until)


@_local
async def _local_revoke_stamped(
    ctx: WorkerContext, headers: dict[str, Any], terminate: bool, signal: str, until: float
) -> list[str]:
    return await ctx.revokes.revoke_by_stamped_headers(
        headers, terminate=terminate, signal=signal, until=until
    )


@_local
async def _local_rate_limit(ctx: WorkerContext, task_name: str, rate_limit: Any) -> None:
    ctx.app.tasks[task_name].rate_limit = rate_limit or None  # RateLimits sees the change


@_local
async def _local_time_limit(
    ctx: WorkerContext, task_name: str, soft: float | None, hard: float | None
) -> None:
    task = ctx.app.tasks[task_name]
    task.soft_time_limit, task.time_limit = soft, hard


@_local
async def _local_add_queue(ctx: WorkerContext, queue: str) -> bool:
    queues = ctx.state.queues
    return await ctx.state.change_queues(
        [*queues, queue] if queue not in queues else queues, FOLLOW
    )


@_local
async def _local_cancel_queue(ctx: WorkerContext, queue: str) -> bool:
    queues = [q for q in ctx.state.queues if q != queue]
    return await ctx.state.change_queues(queues, FOLLOW)


@_local
async def _local_task_events(ctx: WorkerContext, on: bool) -> bool:
    """Send task events from now on, or stop; whether they were on before."""
    before, ctx.state.task_events = ctx.state.task_events, on
    return before
