"""``task.request``: what the running task knows about its own message."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any


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
