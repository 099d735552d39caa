"""What is current: the running task's request (``task.request``) and the current app.

Both are read by layers that sit below ``app.py`` (results, canvas, tasks),
so they live here, at the bottom, and ``app.py`` sets them.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Celeriac


@dataclass(slots=True)
class Request:
    """Celery's ``Task.request`` fields, for the task that is running now."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
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
    delivery_count: int = 1
    children: list[str] = field(default_factory=list)
    """Ids of the tasks this task sent while it ran (stored as its result's children)."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


EMPTY_REQUEST = Request()
current_request: contextvars.ContextVar[Request] = contextvars.ContextVar(
    "celeriac_request", default=EMPTY_REQUEST
)


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
