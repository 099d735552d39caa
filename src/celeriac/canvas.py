"""Signatures: a task call as data, Celery's dict layout on the wire.

A :class:`Signature` is a ``dict`` (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``, ``chord_size``) so it serializes
as Celery's does and a Celery worker reads our callbacks. Used for ``link`` /
``link_error`` callbacks; chains, groups and chords build on it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from .app import Celeriac
    from .result import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Signature", "signature", "maybe_signature"]


class Signature(dict[str, Any], Generic[R]):
    """A task name with arguments and calling options, to be sent later."""

    def __init__(
        self,
        task: str | Mapping[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Celeriac | None = None,
    ):
        if isinstance(task, Mapping):
            source = task
            super().__init__(
                task=str(source["task"]),
                args=list(source.get("args") or ()),
                kwargs=dict(source.get("kwargs") or {}),
                options=dict(source.get("options") or {}),
                subtask_type=source.get("subtask_type"),
                immutable=bool(source.get("immutable", False)),
                chord_size=source.get("chord_size"),
            )
        else:
            super().__init__(
                task=task,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=dict(options or {}),
                subtask_type=subtask_type,
                immutable=immutable,
                chord_size=None,
            )
        self._app = app

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            from .app import current_app

            return current_app()
        return self._app

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """A copy; ``args`` are prepended (unless immutable), kwargs and options merged."""
        new = Signature[R](copy.deepcopy(dict(self)), app=self._app)
        if not self.immutable:
            new["args"] = list(args or ()) + new["args"]
            new["kwargs"].update(kwargs or {})
        new["options"].update(options)
        return new

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        self["options"].setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        self["options"].setdefault("link_error", []).append(errback)
        return errback

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        sig = self.clone(args, kwargs, **options)
        return self.app.send_task(sig.task, sig["args"], sig["kwargs"], **sig["options"])

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        sig = self.clone(args, kwargs, **options)
        return await self.app.asend_task(sig.task, sig["args"], sig["kwargs"], **sig["options"])

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    def __repr__(self) -> str:
        args = ", ".join(
            [*(repr(a) for a in self["args"]), *(f"{k}={v!r}" for k, v in self["kwargs"].items())]
        )
        return f"{self['task']}({args}){'!' if self.immutable else ''}"


def signature(task: str | Mapping[str, Any], *args: Any, **kwargs: Any) -> Signature[Any]:
    return task if isinstance(task, Signature) else Signature(task, *args, **kwargs)


def maybe_signature(value: Any, app: Celeriac | None = None) -> Signature[Any] | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping):
        return Signature(value, app=app)
    raise TypeError(f"expected a signature, not {type(value).__name__}")


def as_signature_list(value: Any, app: Celeriac | None = None) -> list[dict[str, Any]] | None:
    """``link=`` may be one signature or a list of them; the wire wants a list of dicts."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out: list[dict[str, Any]] = []
    for item in items:
        sig = maybe_signature(item, app)
        if sig is not None:
            out.append(dict(sig))
    return out or None
