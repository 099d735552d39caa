"""What one worker process holds now, for remote control to read and change.

The consume loop keeps it (the jobs running and the ones waiting for a task
slot, the queues it consumes); ``inspect active``, ``reserved``, ``stats`` and
``query_task`` read it, ``add_consumer`` and ``cancel_consumer`` change the
queues (the loop notices between two fetches and consumes the new set; the
change returns once it has), ``shutdown`` stops the process through
``request_stop``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .job import Job

__all__ = ["ProcessState", "job_info"]


def _no_stop(reason: str) -> None:
    """The stop of a context no consume loop runs (made alone, in tests)."""


@dataclass(slots=True)
class ProcessState:
    queues: list[str] = field(default_factory=list)
    """The queues consumed; the consume loop follows changes to this list."""
    request_stop: Callable[[str], None] = _no_stop
    active: dict[str, Job] = field(default_factory=dict)
    """Running jobs by task id."""
    time_start: dict[str, float] = field(default_factory=dict)
    """When each running job started (unix seconds)."""
    reserved: dict[str, Job] = field(default_factory=dict)
    """Jobs fetched and waiting for a free task slot."""
    totals: Counter[str] = field(default_factory=Counter)
    """Tasks finished, by name (``stats()['total']``)."""
    started_at: float = field(default_factory=time.time)
    consuming: tuple[str, ...] = ()
    """The queues the fetching broker consumer takes from (set by the consume loop)."""
    task_events: bool = False
    """Whether this process sends task events (``worker_send_task_events``, ``-E``;
    ``enable_events`` / ``disable_events`` change it)."""
    send_heartbeat: Callable[[], None] | None = None
    """Sends a worker-heartbeat now (the voice's ``Events`` sets it; the ``heartbeat``
    command calls it)."""
    _followed: asyncio.Event | None = None

    def consumed(self, queues: tuple[str, ...]) -> None:
        """The consume loop now fetches from ``queues`` only."""
        self.consuming = queues
        if self._followed is not None:
            self._followed.set()

    async def change_queues(self, queues: list[str], timeout: float) -> bool:
        """Consume ``queues`` from now on; True once the loop fetches from them alone
        (within ``timeout``: it notices between two fetches)."""
        self.queues[:] = queues
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.consuming != tuple(self.queues):
            self._followed = asyncio.Event()
            try:
                await asyncio.wait_for(self._followed.wait(), deadline - loop.time())
            except TimeoutError:
                return False
        return True

    def begin(self, job: Job) -> None:
        self.active[job.id] = job
        self.time_start[job.id] = time.time()

    def end(self, job: Job) -> None:
        self.active.pop(job.id, None)
        self.time_start.pop(job.id, None)
        self.totals[job.name] += 1


def job_info(job: Job, time_start: float | None, safe: bool = False) -> dict[str, Any]:
    """A job as ``celery.worker.request.Request.info()`` (what ``inspect active`` lists)."""
    request = job.request
    headers = job.message.headers
    return {
        "id": job.id,
        "name": job.name,
        "args": headers.get("argsrepr") if safe else list(request.args),
        "kwargs": headers.get("kwargsrepr") if safe else dict(request.kwargs),
        "type": job.name,
        "hostname": request.hostname,
        "time_start": time_start,
        "acknowledged": time_start is not None and not job.task.acks_late,
        "delivery_info": request.delivery_info,
        "worker_pid": os.getpid() if time_start is not None else None,
    }
