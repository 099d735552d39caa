"""``Task``: a function the app can send to workers, with Celery's calling API.

``Task`` is ``Generic[P, R]`` over the function's parameters and return type,
so ``add.delay(1, 2)`` is ``AsyncResult[int]`` and ``add.delay("x")`` is a
type error for ``def add(x: int, y: int) -> int``. Each sync call has an
``a``-prefixed async twin; both run the same coroutine.
"""

from __future__ import annotations

import enum
import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, ParamSpec, TypeVar

from . import states
from ._sync import run_sync
from .backends.base import ResultMeta, utcnow_iso
from .canvas import Signature, chain, chunks, xmap, xstarmap
from .errors import Ignore, MaxRetriesExceededError, Retry
from .execution import Outcome, autoretry_countdown, call_async, call_sync
from .protocol import Outgoing
from .request import Request, current_request
from .result import AsyncResult, EagerResult
from .sending import SendOptions, build_outgoing, publish

if TYPE_CHECKING:
    from .app import Celeriac

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["AsyncTask", "Task"]


class _Setting(enum.Enum):
    """An option left to the app's setting (where None means something of its own)."""

    FROM_SETTINGS = enum.auto()


FROM_SETTINGS: Literal[_Setting.FROM_SETTINGS] = _Setting.FROM_SETTINGS


class Task(Generic[P, R]):
    """A registered task. Attributes are Celery's task options."""

    def __init__(
        self,
        app: Celeriac,
        fn: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        max_retries: int | Literal[_Setting.FROM_SETTINGS] | None = FROM_SETTINGS,
        default_retry_delay: float | None = None,
        autoretry_for: tuple[type[BaseException], ...] = (),
        dont_autoretry_for: tuple[type[BaseException], ...] = (),
        retry_kwargs: Mapping[str, Any] | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
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
        typing: bool = True,
        redact_kwargs: Sequence[str] = (),
    ):
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        conf = app.conf
        self.max_retries = conf.task_max_retries if max_retries is FROM_SETTINGS else max_retries
        """None: retry for ever (``task_max_retries`` unless the task says)."""
        self.default_retry_delay = (
            conf.task_default_retry_delay if default_retry_delay is None else default_retry_delay
        )
        self.autoretry_for = tuple(autoretry_for)
        self.dont_autoretry_for = tuple(dont_autoretry_for)
        self.retry_kwargs = dict(retry_kwargs or {})
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.acks_late = conf.task_acks_late if acks_late is None else acks_late
        self.reject_on_worker_lost = (
            conf.task_reject_on_worker_lost
            if reject_on_worker_lost is None
            else reject_on_worker_lost
        )
        self.time_limit = conf.task_time_limit if time_limit is None else time_limit
        self.soft_time_limit = (
            conf.task_soft_time_limit if soft_time_limit is None else soft_time_limit
        )
        self.ignore_result = conf.task_ignore_result if ignore_result is None else ignore_result
        self.expires = expires
        self.priority = priority
        self.queue = queue
        self.serializer = serializer
        self.rate_limit = conf.task_default_rate_limit if rate_limit is None else rate_limit
        self.track_started = conf.task_track_started if track_started is None else track_started
        self.typing = typing
        self.redact_kwargs = tuple(redact_kwargs) or tuple(conf.task_redact_kwargs)
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = _call_signature(fn, bind)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", "")

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- running in-process ------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(*args, **kwargs)  # type: ignore[no-any-return]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function right here (with ``self`` when bound)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The request of the task running now in this context."""
        return current_request.get()

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
        parent = current_request.get()
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
        task_id = options.get("task_id") or str(uuid.uuid4())
        retries = int(options.get("retries", 0))
        while True:
            request = Request(
                id=task_id,
                task=self.name,
                args=args,
                kwargs=kwargs,
                retries=retries,
                is_eager=True,
                root_id=task_id,
                hostname="eager",
            )
            outcome = self._run_eagerly(request)
            if not _retries_eagerly(self, outcome, retries):
                break
            retries += 1
            if isinstance(outcome.exc, Retry):
                args = outcome.exc.new_args if outcome.exc.new_args is not None else args
                kwargs = outcome.exc.new_kwargs if outcome.exc.new_kwargs is not None else kwargs
        if outcome.state == states.FAILURE and outcome.exc is not None:
            if self.app.conf.task_eager_propagates or options.get("throw"):
                raise outcome.exc
            meta = ResultMeta.of_error(task_id, states.FAILURE, outcome.exc, outcome.traceback)
        else:
            meta = ResultMeta(task_id, outcome.state, outcome.value, date_done=utcnow_iso())
        return EagerResult(task_id, self.app, meta, self.name)

    def _run_eagerly(self, request: Request) -> Outcome:
        if self.is_async:
            return run_sync(lambda: call_async(self, request))
        return call_sync(self, request)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id, self.app, self.name)

    # -- signatures ----------------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task with these (partial) arguments."""
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """An immutable signature: a callback's parent result is not prepended."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        return Signature(self.name, args, kwargs, options, app=self.app)

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
        return self.run(*args, **kwargs)


def _retries_eagerly(task: Task[Any, Any], outcome: Outcome, retries: int) -> bool:
    """Eager mode retries at once: on ``self.retry()``, or an ``autoretry_for`` error."""
    if outcome.state == states.RETRY:
        return True
    return (
        outcome.state == states.FAILURE
        and outcome.exc is not None
        and autoretry_countdown(task, outcome.exc, retries) is not None
    )


def _call_signature(fn: Callable[..., Any], bind: bool) -> inspect.Signature | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if bind:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    return sig
