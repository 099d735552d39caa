"""Calling a task function with its request, and what came of it.

Shared by the worker and by eager ``Task.apply()``, so both run a task the
same way: the request is set for ``self.request``, the task's
``before_start`` handler runs first (as in Celery, what it raises fails the
task), control-flow exceptions (Retry, Reject, Ignore) become outcomes, and
retry delays follow the task's backoff options.
"""

from __future__ import annotations

import builtins
import random
import time
import traceback as tb
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import states
from .errors import Ignore, Reject, Retry
from .request import Request, current_request
from .shared_storage import StorageWrite

if TYPE_CHECKING:
    from .task import Task

__all__ = [
    "ExceptionInfo",
    "HandlerCall",
    "Outcome",
    "autoretry_countdown",
    "call_async",
    "call_sync",
    "handler_calls",
]


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """An exception with its formatted traceback: the ``einfo`` that Celery's task
    handlers (``on_failure``, ``on_retry``) receive, with billiard's attributes."""

    exception: BaseException
    traceback: str
    internal: bool = False

    @classmethod
    def of(cls, exc: BaseException, text: str | None = None) -> ExceptionInfo:
        """``exc`` with ``text`` as its traceback, else its own, formatted."""
        if text is None:
            text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(exc, text)

    @property
    def type(self) -> builtins.type[BaseException]:
        return builtins.type(self.exception)

    @property
    def tb(self) -> TracebackType | None:
        return self.exception.__traceback__

    @property
    def exc_info(self) -> tuple[builtins.type[BaseException], BaseException, TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback


@dataclass(slots=True)
class Outcome:
    """What running a task produced. ``state`` is one of ``celeriac.states``."""

    state: str
    value: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0
    retry_countdown: float | None = None
    """For RETRY: seconds until the next attempt."""
    requeue: bool = False
    """For REJECTED: hand the message back instead of dead-lettering it."""
    ack_writes: Sequence[StorageWrite] = ()
    """A result store's writes for the broker to make with the ack (see
    ``celeriac.shared_storage``): set by the worker's ``Results``."""


def _classify(exc: BaseException, runtime: float) -> Outcome:
    """What a task function raised, as an outcome: control flow (Retry, Reject,
    Ignore) or a FAILURE with its traceback."""
    if isinstance(exc, Retry):
        return Outcome(states.RETRY, exc=exc, runtime=runtime, retry_countdown=_when(exc.when))
    if isinstance(exc, Reject):
        return Outcome(states.REJECTED, exc=exc, runtime=runtime, requeue=exc.requeue)
    if isinstance(exc, Ignore):
        return Outcome(states.IGNORED, runtime=runtime)
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return Outcome(states.FAILURE, exc=exc, traceback=text, runtime=runtime)


def _when(when: Any) -> float | None:
    if when is None:
        return None
    if isinstance(when, int | float):
        return float(when)
    return max(0.0, float(when.timestamp()) - time.time())


def call_sync(task: Task[Any, Any], request: Request) -> Outcome:
    """Run a sync task function in this thread, with ``request`` as ``self.request``.

    What it raises becomes the outcome (see :func:`_classify`); SystemExit and
    KeyboardInterrupt still propagate.
    """
    token, started = current_request.set(request), time.perf_counter()
    try:
        if task.own_handlers:
            value = _run_as_its_class_says(task, request)
        else:
            value = task.run(*request.args, **request.kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return _classify(exc, time.perf_counter() - started)
    finally:
        current_request.reset(token)
    return Outcome(states.SUCCESS, value, runtime=time.perf_counter() - started)


async def call_async(task: Task[Any, Any], request: Request) -> Outcome:
    """Run an ``async def`` task on the running loop (its own context), as
    :func:`call_sync` runs a sync one."""
    token, started = current_request.set(request), time.perf_counter()
    try:
        if task.own_handlers:
            _before_start(task, request)
        value = await task.run(*request.args, **request.kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return _classify(exc, time.perf_counter() - started)
    finally:
        current_request.reset(token)
    return Outcome(states.SUCCESS, value, runtime=time.perf_counter() - started)


def _run_as_its_class_says(task: Task[Any, Any], request: Request) -> Any:
    """Run a task whose ``base=`` class has handlers or its own ``__call__``, as Celery
    does: ``before_start`` first, then the function through that ``__call__``."""
    _before_start(task, request)
    request.through_call = task.overrides("__call__")
    run = task if request.through_call else task.run
    return run(*request.args, **request.kwargs)


def _before_start(task: Task[Any, Any], request: Request) -> None:
    if request.id is not None and task.overrides("before_start"):
        task.before_start(request.id, request.args, request.kwargs)


HandlerCall = tuple[str, Callable[..., Any], tuple[Any, ...]]
"""A task handler to call: its name, the bound method, its arguments."""


def handler_calls(task: Task[Any, Any], request: Request, outcome: Outcome) -> list[HandlerCall]:
    """The handlers ``task`` overrides that Celery calls after ``outcome``, in
    Celery's order and with its arguments (``celeriac.worker.middleware.handlers``
    calls them in the worker; ``Task.apply`` eagerly)."""
    common = (request.id, request.args, request.kwargs)
    calls: list[HandlerCall] = []
    exc = outcome.exc
    if outcome.state == states.RETRY and isinstance(exc, Retry):
        if task.overrides("on_retry"):
            calls.append(("on_retry", task.on_retry, (exc.exc, *common, ExceptionInfo.of(exc))))
        return calls
    if outcome.state == states.SUCCESS:
        retval = outcome.value
        if task.overrides("on_success"):
            calls.append(("on_success", task.on_success, (retval, *common)))
    elif outcome.state == states.FAILURE and exc is not None:
        retval = exc
        if task.overrides("on_failure"):
            einfo = ExceptionInfo.of(exc, outcome.traceback)
            calls.append(("on_failure", task.on_failure, (exc, *common, einfo)))
    else:
        return calls
    if task.overrides("after_return"):
        calls.append(("after_return", task.after_return, (outcome.state, retval, *common, None)))
    return calls


def autoretry_countdown(task: Task[Any, Any], exc: BaseException, retries: int) -> float | None:
    """Seconds before retrying ``exc`` under ``autoretry_for``, or None to not retry."""
    if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
        return None
    if task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for):
        return None
    max_retries = task.retry_kwargs.get("max_retries", task.max_retries)
    if max_retries is not None and retries >= max_retries:
        return None
    if "countdown" in task.retry_kwargs:
        return float(task.retry_kwargs["countdown"])
    if task.retry_backoff:
        return backoff_interval(
            float(task.retry_backoff), retries, task.retry_backoff_max, task.retry_jitter
        )
    return float(task.default_retry_delay)


def backoff_interval(factor: float, retries: int, maximum: float, full_jitter: bool) -> float:
    """Celery's exponential backoff: ``factor * 2**retries``, capped, optionally jittered."""
    countdown: float = min(maximum, factor * (2**retries))
    if full_jitter:
        countdown = random.uniform(0, countdown)
    return max(0.0, countdown)
