"""What is current: the running task's request (``task.request``) and the current app.

Both are read by layers that sit below ``app.py`` (results, canvas, tasks),
so they live here, at the bottom, and ``app.py`` sets them.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celeriac


@dataclass(slots=True)
class Request:
    """Celery's ``Task.request`` fields, for the task that is running now."""

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    """A list when the task came in a message (as in Celery), else what the caller gave."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: str | None = None
    expires: str | None = None
    hostname: str | None = None
    origin: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_info: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    correlation_id: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    is_eager: bool = False
    called_directly: bool = True
    """True when the task's function was called as a plain function (add(2, 2)),
    not run by a worker or ``apply()``: Celery's test before ``update_state``."""
    delivery_count: int = 1
    within: Request | None = None
    """For a direct call made while a task runs: the running task's request (a task
    sent from the call is that task's child, as with Celery's ``current_worker_task``)."""
    through_call: bool = False
    """Set while the worker runs the task through a ``base=`` class's own
    ``__call__``: its ``super().__call__`` runs the function with this request
    (Celery's rule), rather than as a direct call."""
    children: list[str] = field(default_factory=list)
    """Ids of the tasks this task sent while it ran (stored as its result's children)."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def result_fields(self, extended: bool) -> dict[str, Any]:
        """What Celery stores beside this task's result, in its field names: the
        group and parent ids, and with ``result_extended`` the name, arguments,
        worker, retries and queue."""
        fields: dict[str, Any] = {}
        if extended:
            fields = {
                "name": self.task,
                "args": list(self.args),
                "kwargs": self.kwargs,
                "worker": self.hostname,
                "retries": self.retries,
                "queue": self.delivery_info.get("routing_key"),
            }
        if self.group:
            fields["group_id"] = self.group
        if self.parent_id:
            fields["parent_id"] = self.parent_id
        return fields

    def fence(self) -> int:
        """The fence of this attempt's result writes (see :func:`result_fence`)."""
        return result_fence(self.retries, self.delivery_count)


def result_fence(retries: int, delivery_count: int) -> int:
    """The fence of the result writes of one attempt of a task: its ``retries``,
    then its delivery count.

    Both grow from one attempt to the next: a retry is a new message with
    ``retries + 1``, and a delivery taken over from a worker whose lease
    lapsed counts one more. So a late worker's writes carry a lower fence
    than those of the attempt that took over, and the store drops them
    (``ResultBackend.store``).
    """
    return max(retries, 0) << 32 | min(delivery_count, 0xFFFFFFFF)


EMPTY_REQUEST = Request()
current_request: contextvars.ContextVar[Request] = contextvars.ContextVar(
    "celeriac_request", default=EMPTY_REQUEST
)


def running_request() -> Request:
    """The request of the task that a worker or ``apply()`` runs in this context,
    seen through direct calls of other tasks; the empty request if none."""
    request = current_request.get()
    return request.within or request


_current_app: Celeriac | None = None
_default_app: Callable[[], Celeriac] | None = None
_app_lock = threading.Lock()


def set_current_app(app: Celeriac) -> None:
    global _current_app
    with _app_lock:
        _current_app = app


def set_default_app(factory: Callable[[], Celeriac]) -> None:
    """How to make the app :func:`current_app` returns when none was made (``app.py`` says)."""
    global _default_app
    _default_app = factory


def current_app() -> Celeriac:
    """The app most recently created (or set current); a default one if none."""
    global _current_app
    with _app_lock:
        if _current_app is None:
            if _default_app is None:  # pragma: no cover - importing celeriac sets it
                raise RuntimeError("no app: import celeriac.app first")
            _current_app = _default_app()
        return _current_app


def current_app_if_any() -> Celeriac | None:
    """The current app, or None if no app was made or set current yet."""
    return _current_app
