"""Durable revokes in one worker process: the task ids, and stamped headers, not to run.

One :class:`Revokes` per worker process (``WorkerContext.revokes``). A revoke
is kept in the broker's revoke store (``Operations.store_revoked``) until its
``until`` (``worker_revoke_expires``, Celery's three hours), so a worker
started later, and every process of every worker, honours it. Remote control
tells each process at once (``revoke``); on top of that each process

* loads the store when its consume loop starts, and
* reads it again every :data:`REFRESH_INTERVAL` seconds, so a revoke this
  process did not hear (sent while it was starting, or stored by a client
  while no worker listened) lands within that time. Five seconds: the
  broadcast is the fast path; the re-read is the net under it, and costs one
  small read per process per interval.

Stamped headers (Celery 5.3+'s ``revoke_by_stamped_headers``) are kept in the
same store, one entry per header and value, under the key
``stamp:<JSON [header, value]>`` (:func:`stamp_key`), so they expire and reach
every process the same way. A task matches when one of its ``stamped_headers``
has a value (or, for a list, any value) that was revoked, as in Celery's worker
(its request's ``revoked()``). A task id that itself starts with ``stamp:[``
would be taken for a stamp.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Protocol

import orjson

from .. import states
from ..backends.base import ResultBackend, ResultMeta
from ..brokers.operations import Operations
from ..errors import TaskRevokedError
from ..execution import Outcome
from .job import Job

__all__ = [
    "REFRESH_INTERVAL",
    "STAMP_PREFIX",
    "TERMINATED_BY",
    "Revokes",
    "RunningTasks",
    "end_process",
    "signal_number",
    "stamp_key",
    "terminated_by",
]

logger = logging.getLogger("celeriac.worker")

REFRESH_INTERVAL = 5.0
STAMP_PREFIX = "stamp:"
TERMINATED_BY = "terminated_by"
"""The ``Job.extras`` key of the signal a terminated job was stopped with."""
_UNMARKED = frozenset({states.PENDING, states.RECEIVED})
"""States a revoke replaces at once with REVOKED (Celery 5.7 also names RETRY and
REJECTED: a RETRY here is written by a worker, with a fence a mark cannot pass, and
REJECTED is final)."""


def stamp_key(header: str, value: Any) -> str:
    """The revoke store's key of one revoked stamp."""
    return STAMP_PREFIX + orjson.dumps([header, value]).decode()


def terminated_by(job: Job) -> int | None:
    """The signal ``job`` was terminated with (``revoke(terminate=True)``), or None: what
    Celery's ``task-revoked`` event and ``task_revoked`` signal report as ``signum``."""
    signum = job.extras.get(TERMINATED_BY)
    return signum if isinstance(signum, int) else None


def signal_number(name: str | int) -> int:
    """Celery's spelling of a signal: ``"SIGKILL"``, ``"KILL"``, ``"9"`` or 9."""
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signals.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


_NOT_ENDING = frozenset(
    {
        signals.SIGCHLD,
        signals.SIGCONT,
        signals.SIGURG,
        signals.SIGWINCH,
        signals.SIGSTOP,
        signals.SIGTSTP,
        signals.SIGTTIN,
        signals.SIGTTOU,
    }
)
"""Signals whose default action does not end a process (it ignores them, or stops it)."""


def end_process(signum: int) -> NoReturn:
    """End this process by ``signum``'s default action (not a handler the worker set:
    SIGTERM's would only begin a warm shutdown, waiting for the very task being
    terminated). A signal whose default does not end a process is SIGKILL instead."""
    chosen = signals.SIGKILL if signum in _NOT_ENDING else signum
    signals.signal(chosen, signals.SIG_DFL)
    signals.pthread_sigmask(signals.SIG_UNBLOCK, {chosen})
    signals.raise_signal(chosen)
    os._exit(1)  # only if the signal did not end the process


class RunningTasks(Protocol):
    """What a revoke with ``terminate=True`` stops (the consume loop)."""

    def running(self) -> Iterable[Job]: ...

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop the running task ``task_id``; False if it does not run here."""


class Revokes:
    """The revokes one worker process honours (module docstring).

    ``backend`` (given to the node's voice only) marks a revoked task that has
    not started REVOKED at once, as Celery 5.7's worker does; the fence of that
    write (0) is below any worker's, so it never replaces what a run stored.
    """

    def __init__(
        self,
        operations: Callable[[], Operations],
        tasks: RunningTasks,
        *,
        backend: Callable[[], Awaitable[ResultBackend]] | None = None,
        refresh: float = REFRESH_INTERVAL,
    ):
        self._operations = operations
        self._tasks = tasks
        self._backend = backend
        self._refresh = refresh
        self._until: dict[str, float] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Load the stored revokes, then re-read them every ``refresh`` seconds."""
        await self._reload()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)

    def __contains__(self, task_id: object) -> bool:
        until = self._until.get(task_id) if isinstance(task_id, str) else None
        return until is not None and until > time.time()

    def ids(self) -> list[str]:
        """The task ids revoked now (``inspect revoked``)."""
        now = time.time()
        return [i for i, u in self._until.items() if u > now and not i.startswith(STAMP_PREFIX)]

    def revoked_by(self, job: Job) -> str | None:
        """Why ``job`` must not run (``"revoked"``, or the stamp that matched), or None."""
        until = self._until.get(job.id)
        if until is not None and until > time.time():
            return "revoked"
        if not job.message.headers.get("stamped_headers"):  # most tasks: no stamps to match
            return None
        for header, value in _stamps(job):
            if stamp_key(header, value) in self:
                return f"revoked by header: {{{header!r}: {value!r}}}"
        return None

    def refused(self, job: Job) -> Outcome | None:
        """The REVOKED outcome of a task that must not run (logged), or None."""
        why = self.revoked_by(job)
        if why is None:
            return None
        logger.info("Discarding revoked task: %s[%s] (%s)", job.name, job.id, why)
        return Outcome(states.REVOKED, exc=TaskRevokedError("revoked"))

    async def revoke(
        self, ids: Sequence[str], *, terminate: bool = False, signal: str = "SIGTERM", until: float
    ) -> list[str]:
        """Revoke ``ids`` until ``until`` (unix seconds); with ``terminate``, stop those
        running here. Returns the ids terminated."""
        entries = dict.fromkeys(ids, until)
        self._merge(entries)
        running = {job.id for job in self._tasks.running()}
        terminated = self._terminate(running & set(ids), signal) if terminate else []
        await self._store(entries)
        await self._mark_revoked([i for i in ids if i not in running])
        return terminated

    async def revoke_by_stamped_headers(
        self,
        headers: Mapping[str, Any],
        *,
        terminate: bool = False,
        signal: str = "SIGTERM",
        until: float,
    ) -> list[str]:
        """Revoke the tasks stamped with ``headers`` (``{header: value or [values]}``)
        until ``until``; with ``terminate``, stop those running here. Returns the ids
        terminated."""
        entries = {
            stamp_key(header, value): until
            for header, values in headers.items()
            for value in _as_list(values)
        }
        self._merge(entries)
        matching = {
            job.id
            for job in self._tasks.running()
            if any(stamp_key(h, v) in entries for h, v in _stamps(job))
        }
        terminated = self._terminate(matching, signal) if terminate else []
        await self._store(entries)
        return terminated

    def _terminate(self, ids: Iterable[str], signal: str) -> list[str]:
        signum = signal_number(signal)
        terminated = [task_id for task_id in ids if self._tasks.terminate(task_id, signum)]
        for task_id in terminated:
            logger.info("Terminating %s (%s)", task_id, signal)
        return terminated

    def _merge(self, revoked: Mapping[str, float]) -> None:
        now = time.time()
        for key, until in revoked.items():
            if until > self._until.get(key, 0.0):
                self._until[key] = until
        self._until = {k: u for k, u in self._until.items() if u > now}

    async def _store(self, entries: Mapping[str, float]) -> None:
        try:
            await self._operations().store_revoked(entries)
        except Exception as exc:
            logger.warning(
                "could not store a revoke in the broker (%s): it holds in this process only", exc
            )

    async def _mark_revoked(self, ids: Sequence[str]) -> None:
        if self._backend is None or not ids:
            return
        try:
            backend = await self._backend()
            error, stored = TaskRevokedError("revoked"), await backend.get_many(ids)
            for task_id, meta in zip(ids, stored, strict=True):
                if meta is None or meta.status in _UNMARKED:
                    mark = ResultMeta.of_error(task_id, states.REVOKED, error)
                    await backend.store(mark, fence=0)
        except Exception as exc:
            logger.warning("could not mark revoked tasks REVOKED in the result store: %s", exc)

    async def _reload(self) -> None:
        try:
            stored = await self._operations().revoked()
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "cannot read the stored revokes (%s); trying again every %ss",
                    exc,
                    self._refresh,
                )
            self._failing = True
            return
        if self._failing:
            logger.info("stored revokes readable again")
        self._failing = False
        self._merge(stored)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            await self._reload()


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple | set) else [value]


def _stamps(job: Job) -> Iterator[tuple[str, Any]]:
    """Each (header, value) the task is stamped with (every value of a list)."""
    headers = job.message.headers
    stamped, stamps = headers.get("stamped_headers"), headers.get("stamps")
    if not isinstance(stamped, list | tuple) or not isinstance(stamps, Mapping):
        return
    for header in stamped:
        value = stamps.get(header)
        if value is not None:
            for one in _as_list(value):
                yield str(header), one
