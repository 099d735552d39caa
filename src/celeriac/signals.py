"""Signals: Celery 5.7's hooks, with its names, senders and keyword arguments.

Code written for ``celery.signals`` runs with the import changed::

    from celeriac.signals import task_postrun

    @task_postrun.connect
    def done(sender=None, task_id=None, state=None, **kwargs): ...

:class:`Signal` is Celery's ``celery.utils.dispatch.Signal``: receivers must
take ``**kwargs``; they are held by weak reference unless ``weak=False``
(a bound method through :class:`weakref.WeakMethod`, so it lives as long as
its object); ``sender=`` filters; ``dispatch_uid`` connects a receiver once.
:meth:`Signal.send` calls every receiver and, as Celery's does, catches what
one raises: it is logged with the signal's name and returned as that
receiver's response, so a faulty receiver breaks neither the task nor the
worker.

``async def`` receivers: :meth:`Signal.asend` (used where celeriac sends from
async code: the worker's hooks, the publish path) awaits them on the caller's
loop. :meth:`Signal.send` (sync code: the task publish, the CLI, the
supervisor) runs one to completion before it returns, through the sync
facade (``celeriac._sync``), so what it does (a header added) is done when
the send returns, as with a sync receiver. In a thread that is running a loop
that means the portal thread's loop, not the caller's.

Where each signal fires in celeriac, and what differs from Celery, is in
``docs/signals.md``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar, overload

from ._sync import run_sync

__all__ = [
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_embedded_init",
    "beat_init",
    "before_task_publish",
    "celeryd_after_setup",
    "celeryd_init",
    "heartbeat_sent",
    "import_modules",
    "setup_logging",
    "task_failure",
    "task_internal_error",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_before_create_process",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]

logger = logging.getLogger("celeriac.signals")

F = TypeVar("F", bound=Callable[..., Any])
LookupKey = tuple[Hashable, Hashable]
"""(the receiver's id or its ``dispatch_uid``, the sender's id)."""


def _make_id(target: object) -> Hashable:
    """Celery's identity of a receiver or sender: a string is itself (a sender may
    be a task's name or a worker's hostname); a bound method is its object and
    function (a fresh bound method object is made at every attribute access)."""
    if isinstance(target, bytes | str):
        return target
    func = getattr(target, "__func__", None)
    if func is not None:
        return (id(getattr(target, "__self__", None)), id(func))
    return id(target)


_ANY_SENDER = _make_id(None)


def _accepts_kwargs(receiver: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(receiver).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let it be
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Signal:
    """One signal: receivers connect to it; the code that owns it sends it.

    ``receivers`` is the list of ``(lookup key, receiver or weak reference)``,
    as in Celery: ``if signal.receivers:`` is the cheap test a sender makes
    before building its arguments.
    """

    def __init__(self, providing_args: Iterable[str] | None = None, name: str | None = None):
        self.name = name
        self.providing_args = set(providing_args or ())
        self.receivers: list[tuple[LookupKey, Any]] = []
        self.lock = threading.RLock()  # a send from a signal handler may interrupt one
        self._dead_receivers = False

    def __repr__(self) -> str:
        return f"<Signal: {self.name} providing_args={self.providing_args!r}>"

    @overload
    def connect(
        self,
        receiver: F,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> F: ...
    @overload
    def connect(
        self,
        receiver: None = None,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> Callable[[F], F]: ...
    def connect(
        self,
        receiver: F | None = None,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> F | Callable[[F], F]:
        """Call ``receiver`` on every send (from ``sender`` only, if given).

        Usable as ``@signal.connect`` and ``@signal.connect(sender=...)``; returns
        the receiver. With ``weak`` (the default) the signal does not keep the
        receiver alive. A second connect with the same receiver (or the same
        ``dispatch_uid``) and sender does nothing. Raises ``ValueError`` if the
        receiver does not take ``**kwargs``, as Celery does.
        """
        if receiver is None:

            def decorator(fn: F) -> F:
                return self.connect(fn, sender, weak, dispatch_uid)

            return decorator
        if not callable(receiver):
            raise TypeError(f"signal receivers must be callable, not {receiver!r}")
        if not _accepts_kwargs(receiver):
            raise ValueError("Signal receiver must accept keyword arguments.")
        key = (dispatch_uid if dispatch_uid else _make_id(receiver), _make_id(sender))
        held: Any = receiver
        if weak:
            is_method = hasattr(receiver, "__self__") and hasattr(receiver, "__func__")
            ref = weakref.WeakMethod if is_method else weakref.ref
            held = ref(receiver, self._receiver_died)
        with self.lock:
            self._clear_dead_receivers()
            if all(existing != key for existing, _ in self.receivers):
                self.receivers.append((key, held))
        return receiver

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        sender: object = None,
        weak: bool | None = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Stop calling ``receiver`` (or the one connected with ``dispatch_uid``) for
        ``sender``; True if it was connected. A weakly held receiver that is
        collected goes by itself."""
        if weak is not None:
            warnings.warn(
                "Passing `weak` to disconnect has no effect.", DeprecationWarning, stacklevel=2
            )
        key = (dispatch_uid if dispatch_uid else _make_id(receiver), _make_id(sender))
        with self.lock:
            self._clear_dead_receivers()
            for index, (existing, _) in enumerate(self.receivers):
                if existing == key:
                    del self.receivers[index]
                    return True
        return False

    def has_listeners(self, sender: object = None) -> bool:
        return bool(self._live_receivers(sender))

    def send(self, sender: object, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver for ``sender`` with ``signal``, ``sender`` and ``named``.

        Returns ``[(receiver, response)]``; a receiver that raised has its
        exception as the response (it is logged, not raised). An ``async def``
        receiver is run to completion here (see the module's docstring).
        """
        if not self.receivers:
            return []
        responses = []
        for receiver in self._live_receivers(sender):
            response = self._call(receiver, sender, named)
            if inspect.isawaitable(response):
                try:
                    response = run_sync(functools.partial(_awaited, response))
                except Exception as exc:
                    response = self._failed(receiver, exc)
            responses.append((receiver, response))
        return responses

    send_robust = send  # Celery's (and Django's) name for the same thing

    async def asend(self, sender: object, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """:meth:`send` from async code: an ``async def`` receiver is awaited here."""
        if not self.receivers:
            return []
        responses = []
        for receiver in self._live_receivers(sender):
            response = self._call(receiver, sender, named)
            if inspect.isawaitable(response):
                try:
                    response = await response
                except Exception as exc:
                    response = self._failed(receiver, exc)
            responses.append((receiver, response))
        return responses

    def _call(self, receiver: Callable[..., Any], sender: object, named: dict[str, Any]) -> Any:
        try:
            return receiver(signal=self, sender=sender, **named)
        except Exception as exc:
            return self._failed(receiver, exc)

    def _failed(self, receiver: Callable[..., Any], exc: Exception) -> Exception:
        logger.error("signal %s: receiver %r raised %r", self.name, receiver, exc, exc_info=exc)
        return exc

    def _live_receivers(self, sender: object) -> list[Callable[..., Any]]:
        sender_key = _make_id(sender)
        with self.lock:
            self._clear_dead_receivers()
            held = [r for (_, key), r in self.receivers if key in (_ANY_SENDER, sender_key)]
        live = [r() if isinstance(r, weakref.ReferenceType) else r for r in held]
        return [r for r in live if r is not None]

    def _receiver_died(self, _ref: object) -> None:
        # Called by the garbage collector, maybe while this thread holds the lock:
        # only mark; connect, disconnect and send sweep under the lock.
        self._dead_receivers = True

    def _clear_dead_receivers(self) -> None:
        if self._dead_receivers:  # the caller holds the lock
            self._dead_receivers = False
            self.receivers[:] = [
                (key, r)
                for key, r in self.receivers
                if not (isinstance(r, weakref.ReferenceType) and r() is None)
            ]


# --- Tasks: the sender is the task (or its name, for the publish signals)
before_task_publish = Signal(
    name="before_task_publish",
    providing_args={
        "body",
        "exchange",
        "routing_key",
        "headers",
        "properties",
        "declare",
        "retry_policy",
    },
)
after_task_publish = Signal(
    name="after_task_publish", providing_args={"body", "exchange", "routing_key"}
)
task_received = Signal(name="task_received", providing_args={"request"})
task_prerun = Signal(name="task_prerun", providing_args={"task_id", "task", "args", "kwargs"})
task_postrun = Signal(
    name="task_postrun", providing_args={"task_id", "task", "args", "kwargs", "retval"}
)
task_success = Signal(name="task_success", providing_args={"result", "runtime"})
task_retry = Signal(name="task_retry", providing_args={"request", "reason", "einfo"})
task_failure = Signal(
    name="task_failure",
    providing_args={"task_id", "exception", "args", "kwargs", "traceback", "einfo"},
)
task_internal_error = Signal(
    name="task_internal_error",
    providing_args={"task_id", "args", "kwargs", "request", "exception", "traceback", "einfo"},
)
task_revoked = Signal(
    name="task_revoked", providing_args={"request", "terminated", "signum", "expired"}
)
task_rejected = Signal(name="task_rejected", providing_args={"message", "exc"})
task_unknown = Signal(name="task_unknown", providing_args={"message", "exc", "name", "id"})

# --- The `worker` command
celeryd_init = Signal(name="celeryd_init", providing_args={"instance", "conf", "options"})
celeryd_after_setup = Signal(name="celeryd_after_setup", providing_args={"instance", "conf"})

# --- The worker
import_modules = Signal(name="import_modules")
worker_init = Signal(name="worker_init")
worker_before_create_process = Signal(name="worker_before_create_process")
worker_process_init = Signal(name="worker_process_init")
worker_process_shutdown = Signal(name="worker_process_shutdown")
worker_ready = Signal(name="worker_ready")
worker_shutdown = Signal(name="worker_shutdown")
worker_shutting_down = Signal(name="worker_shutting_down")
heartbeat_sent = Signal(name="heartbeat_sent")

# --- Logging
_LOGGING_ARGS = {"loglevel", "logfile", "format", "colorize"}
setup_logging = Signal(name="setup_logging", providing_args=_LOGGING_ARGS)
after_setup_logger = Signal(name="after_setup_logger", providing_args={"logger", *_LOGGING_ARGS})
after_setup_task_logger = Signal(
    name="after_setup_task_logger", providing_args={"logger", *_LOGGING_ARGS}
)

# --- Beat
beat_init = Signal(name="beat_init")
beat_embedded_init = Signal(name="beat_embedded_init")
