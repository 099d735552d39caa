"""Runs a job's function: sync tasks in a thread, async tasks on the loop.

A running job can be stopped early, by a time limit or by ``terminate`` (a
revoke with ``terminate=True``); the job is reported at once and the code is
interrupted as far as Python allows:

* a coroutine is cancelled (``CancelledError`` at its next ``await``);
* a thread gets the exception raised inside it by ``PyThreadState_SetAsyncExc``,
  the only way to interrupt Python code in another thread. It lands at the
  thread's next Python instruction: a blocking C call (``time.sleep(60)``, a
  socket read without a timeout, a C extension's loop) finishes first, and a
  task that catches the exception goes on. A thread cannot be killed, so a
  process-pool child whose sync task was stopped ends itself once the outcome
  is settled (``TaskConsumer``), and the supervisor starts a fresh one.

Time limits: at the soft limit :class:`SoftTimeLimitExceeded` is raised inside
the task (a coroutine is cancelled); at the hard limit the job is reported as
:class:`TimeLimitExceeded` (the supervisor also SIGKILLs a child stuck past it).
``terminate`` reports it REVOKED with Celery's ``TaskRevokedError("terminated")``.
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
from ..errors import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from ..execution import Outcome, call_async, call_sync
from .job import Job

__all__ = ["Executor"]

_RAISED_IN_THREAD = (SoftTimeLimitExceeded, TimeLimitExceeded, TaskRevokedError)


@dataclass(slots=True)
class _Running:
    """One job being run, and how to stop it early."""

    job: Job
    future: asyncio.Future[Outcome] | None = None
    """The thread's result (sync) or the coroutine's task (async)."""
    stopped_by: type[BaseException] | None = None
    ident: int = 0
    """The thread running a sync job (0 until it starts)."""
    running: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self, reason: type[BaseException]) -> None:
        """End the job now with ``reason``; the code is interrupted (module docstring)."""
        if self.stopped_by is not None:
            return
        self.stopped_by = reason
        self.raise_in_thread(reason)
        if self.future is not None:
            self.future.cancel()

    def soft_limit(self) -> None:
        if self.job.task.is_async:
            self.stop(SoftTimeLimitExceeded)
        else:
            self.raise_in_thread(SoftTimeLimitExceeded)

    def raise_in_thread(self, exc_type: type[BaseException]) -> None:
        with self.lock:
            if self.running and self.ident:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(exc_type)
                )

    def enter_thread(self) -> bool:
        """Called by the thread before the task runs; False: stopped already."""
        with self.lock:
            self.ident = threading.get_ident()
            self.running = self.stopped_by is None
            return self.running

    def finish(self) -> None:
        with self.lock:
            self.running = False


class Executor:
    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="celeriac-task")
        self._running: dict[str, _Running] = {}

    def running(self) -> list[Job]:
        """The jobs running now."""
        return [run.job for run in self._running.values()]

    def terminate(self, task_id: str) -> Job | None:
        """Stop the running job of ``task_id``: it is reported REVOKED at once. Returns
        the job, or None if no such job runs (or it is being stopped already)."""
        run = self._running.get(task_id)
        if run is None or run.stopped_by is not None:
            return None
        run.stop(TaskRevokedError)
        return run.job

    async def run(self, job: Job, on_deadline: Callable[[float], None] | None = None) -> Outcome:
        """Run the job; ``on_deadline(t)`` is told the wall-clock hard deadline first."""
        loop = asyncio.get_running_loop()
        run = self._running[job.id] = _Running(job)
        timers = []
        if job.soft_limit is not None:
            timers.append(loop.call_later(job.soft_limit, run.soft_limit))
        if job.hard_limit is not None:
            timers.append(loop.call_later(job.hard_limit, run.stop, TimeLimitExceeded))
            if on_deadline is not None:
                on_deadline(time.time() + job.hard_limit)
        try:
            if job.task.is_async:
                return await self._run_async(run)
            return await self._run_sync(run)
        finally:
            for timer in timers:
                timer.cancel()
            if job.hard_limit is not None and on_deadline is not None:
                on_deadline(0.0)
            if self._running.get(job.id) is run:
                del self._running[job.id]

    async def _run_sync(self, run: _Running) -> Outcome:
        job = run.job

        def target() -> Outcome:
            if not run.enter_thread():
                return Outcome(states.REVOKED)  # stopped before it began: nobody waits for this
            try:
                outcome = call_sync(job.task, job.request)
                run.finish()
            except _RAISED_IN_THREAD as exc:  # landed after the task's own code returned
                run.finish()
                return Outcome(states.FAILURE, exc=exc, traceback=traceback.format_exc())
            return outcome

        run.future = asyncio.get_running_loop().run_in_executor(self._pool, target)
        try:
            return await run.future
        except asyncio.CancelledError:
            if run.stopped_by is None:
                raise
            return _stopped(job, run.stopped_by)

    async def _run_async(self, run: _Running) -> Outcome:
        task = asyncio.get_running_loop().create_task(call_async(run.job.task, run.job.request))
        run.future = task
        try:
            outcome = await task
        except asyncio.CancelledError:
            if run.stopped_by is None:
                raise
            return _stopped(run.job, run.stopped_by)  # cancelled before its first step
        if (
            run.stopped_by is not None
            and outcome.state == states.FAILURE
            and isinstance(outcome.exc, asyncio.CancelledError | None)
        ):
            return _stopped(run.job, run.stopped_by)
        return outcome

    def shutdown(self, wait: bool) -> None:
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=wait, cancel_futures=True)


def _stopped(job: Job, reason: type[BaseException]) -> Outcome:
    """The outcome of a job stopped early by ``reason``."""
    if reason is TaskRevokedError:
        return Outcome(states.REVOKED, exc=TaskRevokedError("terminated"))
    if reason is TimeLimitExceeded:
        kind, limit = "hard", job.hard_limit
    else:
        kind, limit = "soft", job.soft_limit
    exc = reason(f"{job.name}[{job.id}] exceeded its {kind} time limit of {limit}s")
    return Outcome(states.FAILURE, exc=exc, runtime=limit or 0.0)
