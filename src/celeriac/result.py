"""``AsyncResult``: a handle on a task's outcome, with Celery's API and async twins."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import states
from ._sync import run_sync
from .backends.base import ResultMeta
from .errors import TaskRevokedError
from .exception_codec import decode_exception
from .request import current_app, running_request

if TYPE_CHECKING:
    from .app import Celeriac

R = TypeVar("R")

__all__ = ["AsyncResult", "EagerResult", "GroupResult"]


class AsyncResult(Generic[R]):
    """The result of task ``id``, read from the app's result store.

    ``state`` is PENDING for an id the store has never seen, as in Celery;
    ``known()`` tells such an id from one that was sent and is waiting (the
    client stores PENDING when it sends, unless ``result_store_pending`` is off).
    """

    def __init__(self, id: str, app: Celeriac | None = None, task_name: str | None = None):
        if app is None:
            app = current_app()
        self.id = id
        self.app = app
        self._name = task_name
        self.parent: AsyncResult[Any] | GroupResult | None = None
        """The result this one follows in a chain (known to the client that sent it)."""
        self._cache: ResultMeta | None = None
        self._on_ready: list[tuple[Callable[[Any], Any], Callable[[Exception], Any] | None]] = []

    @property
    def task_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        return other == self.id if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    # -- async core --------------------------------------------------------
    async def ameta(self) -> ResultMeta | None:
        if self._cache is not None:
            return self._cache
        backend = await self.app.connections().abackend()
        meta = await backend.get(self.id)
        if meta is not None and meta.ready:
            self._set_ready(meta)
        return meta

    def _set_ready(self, meta: ResultMeta) -> None:
        """Keep the ready ``meta``, and call what :meth:`then` registered."""
        self._cache = meta
        pending, self._on_ready = self._on_ready, []
        for callback, on_error in pending:
            _call_back(self, callback, on_error)

    def then(
        self,
        callback: Callable[[Any], Any],
        on_error: Callable[[Exception], Any] | None = None,
        weak: bool = False,
    ) -> None:
        """Call ``callback(self)`` once this result is ready, as Celery's ``then``.

        As in Celery, it is called when this process sees the result ready
        (``get()``, ``wait()``, ``state``, ``ready()``, ...), at once if it
        already did. What ``callback`` raises goes to ``on_error`` when given.
        ``weak`` is accepted for Celery's signature; the callback is held strongly.
        """
        if self._cache is not None:
            _call_back(self, callback, on_error)
        else:
            self._on_ready.append((callback, on_error))

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> R:
        """Wait for the outcome; return the value or raise the task's exception."""
        meta = self._cache
        if meta is None:
            backend = await self.app.connections().abackend()
            meta = await backend.wait(self.id, timeout, interval)
            self._set_ready(meta)
        return self._outcome(meta, propagate)

    async def aforget(self) -> None:
        self._cache = None
        backend = await self.app.connections().abackend()
        await backend.forget(self.id)

    async def astate(self) -> str:
        meta = await self.ameta()
        return states.PENDING if meta is None else meta.status

    def _outcome(self, meta: ResultMeta, propagate: bool) -> R:
        if meta.status == states.SUCCESS:
            return meta.result  # type: ignore[no-any-return]
        if meta.status in states.PROPAGATE_STATES:
            exc = self._exception(meta)
            if propagate:
                raise exc
            return exc  # type: ignore[return-value]
        return meta.result  # type: ignore[no-any-return]

    def _exception(self, meta: ResultMeta) -> BaseException:
        if meta.status == states.REVOKED:
            return TaskRevokedError(f"task {self.id} was revoked")
        return decode_exception(meta.result, meta.traceback)

    # -- sync facade -------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """Block until the task is ready (see :meth:`aget`)."""
        if disable_sync_subtasks:
            _refuse_inside_task()
        return run_sync(lambda: self.aget(timeout, propagate, interval))

    def wait(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> R:
        return self.get(timeout, propagate, interval)

    def _meta(self) -> ResultMeta | None:
        return run_sync(self.ameta)

    @property
    def state(self) -> str:
        meta = self._meta()
        return states.PENDING if meta is None else meta.status

    status = state

    def known(self) -> bool:
        """Whether the result store has any record of this id."""
        return self._meta() is not None

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value, the exception of a failed task, or None."""
        meta = self._meta()
        if meta is None:
            return None
        if meta.status in states.EXCEPTION_STATES:
            return self._exception(meta)
        return meta.result

    info = result
    """The result, or for a custom state (``update_state``) the ``meta`` stored with it."""

    @property
    def name(self) -> str | None:
        """The task's name: the sender's, else what ``result_extended`` stored."""
        return self._name if self._name is not None else self._extended("name")

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

    @property
    def args(self) -> list[Any] | None:
        """The task's positional arguments (stored with ``result_extended``)."""
        return self._extended("args")  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """The task's keyword arguments (stored with ``result_extended``)."""
        return self._extended("kwargs")  # type: ignore[no-any-return]

    @property
    def worker(self) -> str | None:
        """The worker that ran the task (stored with ``result_extended``)."""
        return self._extended("worker")  # type: ignore[no-any-return]

    @property
    def queue(self) -> str | None:
        """The queue the task came from (stored with ``result_extended``)."""
        return self._extended("queue")  # type: ignore[no-any-return]

    @property
    def retries(self) -> int | None:
        """How many times the task was retried (stored with ``result_extended``)."""
        return self._extended("retries")  # type: ignore[no-any-return]

    def _extended(self, field: str) -> Any:
        meta = self._meta()
        return None if meta is None else meta.extra.get(field)

    @property
    def traceback(self) -> str | None:
        meta = self._meta()
        return None if meta is None else meta.traceback

    @property
    def date_done(self) -> str | None:
        meta = self._meta()
        return None if meta is None else meta.date_done

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """Results of the tasks this task sent while it ran."""
        meta = self._meta()
        if meta is None:
            return []
        return [AsyncResult(_child_id(child), self.app) for child in meta.children]

    def forget(self) -> None:
        run_sync(self.aforget)


class EagerResult(AsyncResult[R]):
    """The result of ``Task.apply()``: already known, never stored."""

    def __init__(self, id: str, app: Celeriac, meta: ResultMeta, task_name: str | None = None):
        super().__init__(id, app, task_name)
        self._cache = meta

    async def ameta(self) -> ResultMeta | None:
        return self._cache

    async def aforget(self) -> None:
        self._cache = ResultMeta(self.id, states.PENDING)


def _call_back(
    result: AsyncResult[Any],
    callback: Callable[[Any], Any],
    on_error: Callable[[Exception], Any] | None,
) -> None:
    try:
        callback(result)
    except Exception as exc:
        if on_error is None:
            raise
        on_error(exc)


def _refuse_inside_task() -> None:
    request = running_request()
    if request.id is not None and not request.is_eager:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Use a chain or a callback (link=...), or pass disable_sync_subtasks=False."
        )


def _child_id(child: Any) -> str:
    """Celery stores children as ``[[id, parent], None]``; accept a bare id too."""
    while isinstance(child, list | tuple) and child:
        child = child[0]
    return str(child)


class GroupResult:
    """The results of a group, in order; Celery's ``GroupResult`` API with async twins."""

    def __init__(self, id: str, results: Sequence[AsyncResult[Any]], app: Celeriac | None = None):
        if app is None:
            app = current_app()
        self.id = id
        self.results = list(results)
        self.app = app
        self.parent: AsyncResult[Any] | GroupResult | None = None

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return self.results

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> list[Any]:
        """Every member's value, in order; the first failure is raised if ``propagate``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(await result.aget(remaining, propagate, interval))
        return values

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> list[Any]:
        if disable_sync_subtasks:
            _refuse_inside_task()
        return run_sync(lambda: self.aget(timeout, propagate, interval))

    join = get

    async def astates(self) -> list[str]:
        """Each member's state: what a member already knows (eager, or a ready state
        it read), else one read of the store for the rest."""
        unknown = [r.id for r in self.results if r._cache is None]
        stored: dict[str, ResultMeta | None] = {}
        if unknown:
            backend = await self.app.connections().abackend()
            stored = dict(zip(unknown, await backend.get_many(unknown), strict=True))
        metas = [r._cache if r._cache is not None else stored[r.id] for r in self.results]
        return [states.PENDING if m is None else m.status for m in metas]

    def _states(self) -> list[str]:
        return run_sync(self.astates)

    def ready(self) -> bool:
        return all(s in states.READY_STATES for s in self._states())

    def successful(self) -> bool:
        return all(s == states.SUCCESS for s in self._states())

    def failed(self) -> bool:
        return any(s == states.FAILURE for s in self._states())

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(s == states.SUCCESS for s in self._states())

    async def asave_members(self) -> None:
        backend = await self.app.connections().abackend()
        await backend.save_group(self.id, [r.id for r in self.results])

    def save(self) -> GroupResult:
        """Store the member ids, so :meth:`restore` can find the group by id."""
        run_sync(self.asave_members)
        return self

    @classmethod
    async def arestore(cls, group_id: str, app: Celeriac | None = None) -> GroupResult | None:
        if app is None:
            app = current_app()
        backend = await app.connections().abackend()
        ids = await backend.restore_group(group_id)
        return None if ids is None else cls(group_id, [AsyncResult(i, app) for i in ids], app)

    @classmethod
    def restore(cls, group_id: str, app: Celeriac | None = None) -> GroupResult | None:
        return run_sync(lambda: cls.arestore(group_id, app))

    def forget(self) -> None:
        async def go() -> None:
            backend = await self.app.connections().abackend()
            await backend.forget_group(self.id)
            for result in self.results:
                await backend.forget(result.id)

        run_sync(go)

    delete = forget
