"""``Task``: a function the app can send to workers, with Celery's calling API.

``Task`` is ``Generic[P, R]`` over the function's parameters and return type,
so ``add.delay(1, 2)`` is ``AsyncResult[int]`` and ``add.delay("x")`` is a
type error for ``def add(x: int, y: int) -> int``. Each sync call has an
``a``-prefixed async twin; both run the same coroutine.
"""

from __future__ import annotations

import enum
import functools
import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, ParamSpec, TypeVar

from . import states
from ._sync import run_sync
from .backends.base import ResultMeta
from .canvas import Signature, chain, chunks, xmap, xstarmap
from .eager import apply_eagerly
from .errors import ConfigurationError, Ignore, MaxRetriesExceededError, Retry
from .execution import (
    ExceptionInfo,
)
from .protocol import Outgoing
from .request import Request, current_request, running_request
from .result import AsyncResult, EagerResult
from .sending import SendOptions, build_outgoing, publish

if TYPE_CHECKING:
    from .app import Celeriac

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["AsyncTask", "Task", "task_class"]


class _Unset(enum.Enum):
    """An option the decorator did not give: a ``base=`` class's attribute, else the
    app's setting, decides (``None`` means something of its own for some options)."""

    UNSET = enum.auto()


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET


class Task(Generic[P, R]):
    """A registered task. Attributes are Celery's task options.

    An option comes from the decorator (``@app.task(max_retries=5)``), else
    from a class attribute of a ``base=`` subclass of ``Task`` (Celery's
    ``class MyTask(Task): max_retries = 5``), else from the app's settings.
    The subclass may also define Celery's handlers (:meth:`before_start`,
    :meth:`on_success`, :meth:`on_failure`, :meth:`on_retry`,
    :meth:`after_return`); the worker calls those it overrides.
    """

    def __init__(
        self,
        app: Celeriac,
        fn: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        max_retries: int | _Unset | None = UNSET,
        default_retry_delay: float | None = None,
        autoretry_for: tuple[type[BaseException], ...] | None = None,
        dont_autoretry_for: tuple[type[BaseException], ...] | None = None,
        retry_kwargs: Mapping[str, Any] | None = None,
        retry_backoff: bool | float | None = None,
        retry_backoff_max: float | None = None,
        retry_jitter: bool | None = None,
        acks_late: bool | None = None,
        reject_on_worker_lost: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        ignore_result: bool | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        serializer: str | None = None,
        rate_limit: str | None = None,
        track_started: bool | None = None,
        typing: bool | None = None,
        redact_kwargs: Sequence[str] | None = None,
    ):
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        conf = app.conf
        pick = self._option
        self.max_retries: int | None = (
            max_retries if max_retries is not UNSET else pick("max_retries", conf.task_max_retries)
        )
        """None: retry for ever (``task_max_retries`` unless the task says)."""
        self.default_retry_delay: float = pick(
            "default_retry_delay", conf.task_default_retry_delay, default_retry_delay
        )
        self.autoretry_for: tuple[type[BaseException], ...] = tuple(
            pick("autoretry_for", (), autoretry_for)
        )
        self.dont_autoretry_for: tuple[type[BaseException], ...] = tuple(
            pick("dont_autoretry_for", (), dont_autoretry_for)
        )
        self.retry_kwargs: dict[str, Any] = dict(pick("retry_kwargs", {}, retry_kwargs))
        self.retry_backoff: bool | float = pick("retry_backoff", False, retry_backoff)
        self.retry_backoff_max: float = pick("retry_backoff_max", 600.0, retry_backoff_max)
        self.retry_jitter: bool = pick("retry_jitter", True, retry_jitter)
        self.acks_late: bool = pick("acks_late", conf.task_acks_late, acks_late)
        self.reject_on_worker_lost: bool = pick(
            "reject_on_worker_lost", conf.task_reject_on_worker_lost, reject_on_worker_lost
        )
        self.time_limit: float | None = pick("time_limit", conf.task_time_limit, time_limit)
        self.soft_time_limit: float | None = pick(
            "soft_time_limit", conf.task_soft_time_limit, soft_time_limit
        )
        self.ignore_result: bool = pick("ignore_result", conf.task_ignore_result, ignore_result)
        self.expires: float | datetime | None = pick("expires", None, expires)
        self.priority: int | None = pick("priority", None, priority)
        self.queue: str | None = pick("queue", None, queue)
        self.serializer: str | None = pick("serializer", None, serializer)
        self.rate_limit: str | None = pick("rate_limit", conf.task_default_rate_limit, rate_limit)
        self.track_started: bool = pick("track_started", conf.task_track_started, track_started)
        self.typing: bool = pick("typing", True, typing)
        self.redact_kwargs = tuple(pick("redact_kwargs", (), redact_kwargs)) or tuple(
            conf.task_redact_kwargs
        )
        self.is_async = inspect.iscoroutinefunction(fn)
        self.own_handlers = frozenset(h for h in _HANDLERS if _defines(type(self), h))
        """Celery's handlers (and ``__call__``) this task's class defines: the worker
        calls only these."""
        self._signature = _call_signature(fn, bind)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", "")

    def _option(self, name: str, setting: Any, given: Any = None) -> Any:
        """``given`` if the decorator gave it, else a subclass's class attribute, else
        ``setting`` (instance attributes of ``Task`` itself are set here, so only a
        subclass's class attribute is found on the class)."""
        if given is not None:
            return given
        for klass in type(self).__mro__:
            if klass in (Task, AsyncTask):
                break
            if name in vars(klass):
                return vars(klass)[name]
        return setting

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- running in-process ------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function here as a plain function, as Celery does: ``self.request``
        is a new one with ``called_directly`` True (the caller's request stays the
        parent of what the function sends)."""
        current = current_request.get()
        if current.through_call:  # the worker calling an overridden __call__
            current.through_call = False
            return self.run(*args, **kwargs)  # type: ignore[no-any-return]
        token = current_request.set(self._direct_request(current, args, kwargs))
        try:
            return self.run(*args, **kwargs)  # type: ignore[no-any-return]
        finally:
            current_request.reset(token)

    def _direct_request(
        self, current: Request, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Request:
        within = current.within or (None if current.called_directly else current)
        return Request(task=self.name, args=args, kwargs=kwargs, within=within)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function right here (with ``self`` when bound)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The request of the task running now in this context."""
        return current_request.get()

    # -- handlers (Celery's; override them in a base= subclass) -------------
    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Called in the worker right before the task runs; what it raises fails the task."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called in the worker after the task succeeded and its result was stored."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Called in the worker after the task failed and its failure was stored."""

    def on_retry(
        self,
        exc: BaseException | None,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Called in the worker when the task is to be retried (``exc`` is why)."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:
        """Called in the worker after a task succeeded or failed (``einfo`` is None,
        as in Celery); not after a retry, a rejection or an ignored task."""

    def overrides(self, handler: str) -> bool:
        """Whether this task's class defines its own ``handler`` (one of Celery's, or
        ``__call__``): the worker calls only those."""
        return handler in self.own_handlers

    # -- state of the running task ----------------------------------------------
    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """Store ``state`` (a custom one, e.g. PROGRESS) with ``meta`` as the task's result
        until it finishes: ``AsyncResult.state`` and ``.info`` read it, here and from
        Celery clients. ``task_id`` defaults to the running task's."""
        run_sync(lambda: self.aupdate_state(task_id, state, meta, **kwargs))

    async def aupdate_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kwargs: Any
    ) -> None:
        """:meth:`update_state` for ``async def`` tasks.

        Written with this attempt's fence, so a worker that lost its lease
        cannot turn the task's stored outcome back into progress.
        """
        request = self.request
        own = task_id is None or task_id == request.id
        task_id = task_id if task_id is not None else request.id
        if task_id is None:
            raise RuntimeError("update_state() without task_id works only inside a running task")
        fields = request.result_fields(self.app.conf.result_extended) if own else {}
        record = ResultMeta(
            task_id, state or states.PENDING, meta, kwargs.get("traceback"), extra=fields
        )
        fence = request.fence() if own and not request.is_eager else None
        backend = await self.app.connections().abackend()
        await backend.store(record, reply_to=request.reply_to if own else None, fence=fence)

    # -- sending ------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments (shortcut for ``apply_async``)."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task; options are Celery's (countdown, eta, queue, priority, ...)."""
        call = self._call(args, kwargs, options)
        if isinstance(call, EagerResult):
            return call
        run_sync(lambda: publish(self.app, [call]))
        return AsyncResult(call.message.id, self.app, self.name)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        call = self._call(args, kwargs, options)
        if isinstance(call, EagerResult):
            return call
        await publish(self.app, [call])
        return AsyncResult(call.message.id, self.app, self.name)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """``delay`` once Django's transaction on the default database commits, at once
        outside one, never if it rolls back (Celery's ``DjangoTask``; Django's
        ``transaction.on_commit``). Returns None: nothing is sent yet.

        A process that dies between the commit and the send loses the task;
        ``app.transaction(connection)`` puts the message in the transaction instead
        (docs/transactions.md).
        """
        _on_django_commit(functools.partial(self.delay, *args, **kwargs), None)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> None:
        """``apply_async`` once Django's transaction on the database ``using`` (default:
        the default one) commits, as :meth:`delay_on_commit`."""
        _on_django_commit(functools.partial(self.apply_async, args, kwargs, **options), using)

    def _call(
        self,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any],
    ) -> EagerResult[R] | Outgoing:
        """This call run here and now (``task_always_eager``), or its message to publish."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        opts = SendOptions.from_kwargs(options) if options else SendOptions()
        self._inherit_from_current(opts)
        return build_outgoing(self.app, self.name, args, kwargs, opts, self)

    def _inherit_from_current(self, opts: SendOptions) -> None:
        """A task sent from inside a task is its child (root/parent ids)."""
        parent = running_request()
        if parent.id is not None and not parent.is_eager:
            if opts.parent_id is None:
                opts.parent_id = parent.id
            if opts.root_id is None:
                opts.root_id = parent.root_id or parent.id
            if opts.task_id is None:
                opts.task_id = str(uuid.uuid4())
            parent.children.append(opts.task_id)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError now if the call does not fit the function (Celery's ``typing``)."""
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}() {exc}") from None

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here and now, retries included; nothing is sent or stored."""
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if self.typing:
            self.check_arguments(args, kwargs)
        return apply_eagerly(self, args, kwargs, options)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self.app, self.name)

    # -- signatures ----------------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task with these (partial) arguments."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: a callback's parent result is not prepended."""
        return self.signature(args, kwargs, immutable=True)

    def signature(
        self, args: Sequence[Any] | None = None, *starargs: Any, **starkwargs: Any
    ) -> Signature[R]:
        """Celery's: :class:`Signature`'s arguments after the task (``kwargs``,
        ``options``, ``immutable``, ...), options also as keyword arguments."""
        starkwargs.setdefault("app", self.app)
        return Signature(self, args, *starargs, **starkwargs)

    subtask = signature

    def map(self, it: Iterable[Any]) -> xmap:
        """One call that runs this task's function over ``it`` (Celery's ``task.map``)."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Sequence[Any]]) -> xstarmap:
        """One call that runs this task's function with each tuple of ``it`` as arguments."""
        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Sequence[Any]], n: int) -> chunks:
        """A group of calls, each running the function over ``n`` tuples of ``it``."""
        return chunks(self.s(), it, n, app=self.app)

    # -- inside a running task -----------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Ask to run again later; raises :class:`Retry` (the worker republishes).

        Past ``max_retries`` this raises ``exc`` when given, else
        :class:`MaxRetriesExceededError`, as Celery does.
        """
        request = self.request
        if request.called_directly:  # as Celery: nothing to retry, so raise the reason
            raise exc if exc is not None else Retry("Task can be retried", None)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        when: float | datetime = (
            eta
            if eta is not None
            else (countdown if countdown is not None else self.default_retry_delay)
        )
        raise Retry(
            exc=exc,
            when=when,
            new_args=None if args is None else tuple(args),
            new_kwargs=None if kwargs is None else dict(kwargs),
            options=options,
        )

    def replace(self, sig: Signature[Any]) -> NoReturn:
        """Replace this running task by ``sig``, which takes over its id and what follows it.

        The replacement (a task or a chain) gets this task's id, callbacks,
        errbacks, chain, group and chord, so waiters and chords see its result
        as this task's. Then this task ends without a result of its own.
        """
        request = self.request
        if request.id is None or request.is_eager:
            raise RuntimeError("replace() works only inside a task run by a worker")
        if sig.subtask_type not in (None, "chain"):
            raise TypeError("replace() takes a task signature or a chain")
        inherited = {
            "task_id": request.id, "link": request.callbacks, "link_error": request.errbacks,
            "chain": request.chain, "group_id": request.group, "group_index": request.group_index,
            "chord": request.chord,
        }  # fmt: skip
        replacement = sig.clone(parent_id=request.parent_id, root_id=request.root_id)
        if isinstance(replacement, chain):
            steps = replacement.tasks
            steps[-1]["options"].update({k: v for k, v in inherited.items() if v is not None})
            replacement["kwargs"]["tasks"] = steps
        else:
            replacement["options"].update({k: v for k, v in inherited.items() if v is not None})
        run_sync(lambda: replacement.asend(self.app))
        raise Ignore()


class AsyncTask(Task[P, R]):
    """A task whose function is ``async def``: calling it gives a coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self._call_directly(self._direct_request(current_request.get(), args, kwargs))

    async def _call_directly(self, request: Request) -> Any:
        token = current_request.set(request)
        try:
            return await self.run(*request.args, **request.kwargs)
        finally:
            current_request.reset(token)


def _on_django_commit(send: Callable[[], object], using: str | None) -> None:
    try:
        from django.db import transaction  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "delay_on_commit() and apply_async_on_commit() send after a Django transaction "
            "commits: they need Django (pip install django)"
        ) from None
    transaction.on_commit(send, using=using)


_HANDLERS = ("before_start", "on_success", "on_failure", "on_retry", "after_return", "__call__")


def _defines(cls: type[Task[Any, Any]], handler: str) -> bool:
    return getattr(cls, handler) not in (getattr(Task, handler), getattr(AsyncTask, handler))


def task_class(
    base: object, fn: Callable[..., Any], default: type[Task[Any, Any]] | None = None
) -> type[Task[Any, Any]]:
    """The class of the task made of ``fn``: ``base`` (``@app.task(base=MyTask)``, a
    subclass of :class:`Task`) or, without one, ``AsyncTask`` for an ``async def`` and
    ``default`` (the app's ``task_cls``), else ``Task``, for a sync function."""
    if base is None and default is not None and not inspect.iscoroutinefunction(fn):
        base = default
    if base is None or base is Task or base is AsyncTask:
        return AsyncTask if inspect.iscoroutinefunction(fn) else Task
    if isinstance(base, type) and issubclass(base, Task):
        return base
    raise ConfigurationError(f"base= takes a subclass of celeriac.Task, not {base!r}")


def _call_signature(fn: Callable[..., Any], bind: bool) -> inspect.Signature | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if bind:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return sig
