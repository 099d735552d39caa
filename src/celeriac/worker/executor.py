"""Runs a job's function: sync tasks in a thread, async tasks on the loop.

Time limits: at the soft limit :class:`SoftTimeLimitExceeded` is raised inside
the task (in a thread, by ``PyThreadState_SetAsyncExc``, the only way to
interrupt Python code in another thread; in a coroutine, by cancelling it).
At the hard limit the job is reported as :class:`TimeLimitExceeded` at once;
the thread cannot be killed, so a process-pool child then exits and is
replaced (the supervisor also SIGKILLs a child stuck past the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import states
from ..errors import SoftTimeLimitExceeded, TimeLimitExceeded
from ..execution import Outcome, call_async, call_sync
from .job import Job

__all__ = ["Executor"]


@dataclass(slots=True)
class _Running:
    """A sync task's thread, for raising time-limit errors inside it."""

    ident: int = 0
    running: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def raise_in_thread(self, exc_type: type[BaseException]) -> None:
        with self.lock:
            if self.running and self.ident:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(exc_type)
                )

    def finish(self) -> None:
        with self.lock:
            self.running = False


class Executor:
    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="celeriac-task")

    async def run(self, job: Job, on_deadline: Callable[[float], None] | None = None) -> Outcome:
        """Run the job; ``on_deadline(t)`` is told the wall-clock hard deadline first.

        A sync task without time limits just runs in a pool thread: nothing
        watches it, so it needs no record of its thread.
        """
        if not job.task.is_async and job.soft_limit is None and job.hard_limit is None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, call_sync, job.task, job.request)
        runner = self._run_async if job.task.is_async else self._run_limited
        if job.hard_limit is None or on_deadline is None:
            return await runner(job)
        on_deadline(time.time() + job.hard_limit)
        try:
            return await runner(job)
        finally:
            on_deadline(0.0)

    async def _run_limited(self, job: Job) -> Outcome:
        """A sync task with a time limit, in a pool thread the limits can interrupt."""
        loop = asyncio.get_running_loop()
        state = _Running()

        def target() -> Outcome:
            state.ident = threading.get_ident()
            try:
                outcome = call_sync(job.task, job.request)
                state.finish()
            except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
                state.finish()
                return Outcome(states.FAILURE, exc=exc, traceback=traceback.format_exc())
            return outcome

        future = loop.run_in_executor(self._pool, target)
        soft = None
        if job.soft_limit is not None:
            soft = loop.call_later(job.soft_limit, state.raise_in_thread, SoftTimeLimitExceeded)
        try:
            if job.hard_limit is None:
                return await future
            try:
                return await asyncio.wait_for(asyncio.shield(future), job.hard_limit)
            except TimeoutError:
                state.raise_in_thread(TimeLimitExceeded)
                return _hard_timeout(job)
        finally:
            if soft is not None:
                soft.cancel()

    async def _run_async(self, job: Job) -> Outcome:
        loop = asyncio.get_running_loop()
        task = loop.create_task(call_async(job.task, job.request))
        fired: list[type[BaseException]] = []

        def stop(exc_type: type[BaseException]) -> None:
            fired.append(exc_type)
            task.cancel()

        timers = [
            loop.call_later(limit, stop, exc_type)
            for limit, exc_type in (
                (job.soft_limit, SoftTimeLimitExceeded),
                (job.hard_limit, TimeLimitExceeded),
            )
            if limit is not None
        ]
        try:
            outcome = await task
        except asyncio.CancelledError:
            if not fired:
                raise
            outcome = Outcome(states.FAILURE)
        finally:
            for timer in timers:
                timer.cancel()
        if fired and (
            outcome.state == states.FAILURE
            and isinstance(outcome.exc, asyncio.CancelledError | None)
        ):
            kind = "hard" if fired[-1] is TimeLimitExceeded else "soft"
            exc = fired[-1](f"{job.name}[{job.id}] exceeded its {kind} time limit")
            return Outcome(states.FAILURE, exc=exc, runtime=outcome.runtime)
        return outcome

    def shutdown(self, wait: bool) -> None:
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=wait, cancel_futures=True)


def _hard_timeout(job: Job) -> Outcome:
    exc = TimeLimitExceeded(
        f"{job.name}[{job.id}] exceeded its hard time limit of {job.hard_limit}s"
    )
    return Outcome(states.FAILURE, exc=exc, runtime=job.hard_limit or 0.0)
