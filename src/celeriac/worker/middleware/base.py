"""The hooks a worker feature implements. The consume loop knows these, not features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...brokers.base import Delivery
from ...execution import Outcome
from ..job import Job

if TYPE_CHECKING:
    from ..context import WorkerContext

__all__ = ["Defer", "Middleware", "Skip", "with_own"]


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not run the task: settle it with ``outcome`` as if it had run."""

    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Defer:
    """Do not run the task now: hand it back, visible again in ``delay`` seconds."""

    delay: float


class Middleware:
    """A worker feature. Hooks run in the order of the middleware list.

    ``before_task`` may return :class:`Skip` or :class:`Defer`;
    ``after_task`` may return a different outcome (a retry turns a FAILURE
    into RETRY) and later middleware see that one.
    """

    async def startup(self, ctx: WorkerContext) -> None:
        """Once per worker process, before the first fetch."""

    async def shutdown(self, ctx: WorkerContext) -> None:
        """Once per worker process, after the last task."""

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        return None

    async def task_started(self, ctx: WorkerContext, job: Job) -> None:
        """Right before the task function is called."""

    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        return outcome

    async def dead_lettered(
        self, ctx: WorkerContext, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        """After ``delivery`` went to the dead-letter store: undecodable, unknown task,
        delivered too many times, or rejected by the task (``cause``, if any, says why)."""


def with_own(middleware: Sequence[Middleware], hook: str) -> list[Middleware]:
    """The middleware that implement ``hook`` themselves, in order: the loop calls
    only these, not the base class's no-op of every other one."""
    default = getattr(Middleware, hook)
    return [m for m in middleware if getattr(type(m), hook) is not default]
