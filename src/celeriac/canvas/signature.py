"""Signatures: a task call as data, in Celery's dict layout on the wire.

A :class:`Signature` is a ``dict`` (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``, ``chord_size``), so it
serializes as Celery's does and a Celery worker runs our callbacks, chains
and chords. Subclasses (chain, group, chord, map, starmap, chunks) register
their ``subtask_type`` so a dict read off the wire becomes the right class.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .._sync import run_sync
from ..protocol import Outgoing
from ..request import current_app
from ..result import AsyncResult
from ..sending import SendOptions, build_outgoing, publish

if TYPE_CHECKING:
    from ..app import Celeriac
    from ..task import Task

R = TypeVar("R")

__all__ = ["Signature", "as_signature_list", "maybe_signature", "signature"]

_TYPES: dict[str, type[Signature[Any]]] = {}


class Signature(dict[str, Any], Generic[R]):
    """A task name with arguments and calling options, to be sent later."""

    subtask_type: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.subtask_type is not None:
            _TYPES[cls.subtask_type] = cls

    def __init__(
        self,
        task: str | Mapping[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
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
                subtask_type=self.subtask_type,
                immutable=immutable,
                chord_size=None,
            )
        self._app = app

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        """Copies the call, shares the app (which holds locks and connections)."""
        new = type(self).__new__(type(self))
        dict.__init__(new, {k: copy.deepcopy(v, memo) for k, v in self.items()})
        new._app = self._app
        return new

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: Celeriac | None = None) -> Signature[Any]:
        """The right Signature class for a dict read off the wire."""
        if isinstance(data, Signature):
            return data
        kind = _TYPES.get(str(data.get("subtask_type") or ""), Signature)
        return kind._from_wire(data, app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        return Signature(data, app=app)

    # -- fields ----------------------------------------------------------------
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
    def id(self) -> str | None:
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id else None

    @property
    def app(self) -> Celeriac:
        return current_app() if self._app is None else self._app

    # -- building ----------------------------------------------------------------
    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """A copy; ``args`` are prepended (unless immutable), kwargs and options merged."""
        new = type(self).from_dict(copy.deepcopy(dict(self)), self._app)
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

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        self["options"].setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        self["options"].setdefault("link_error", []).append(errback)
        return errback

    def freeze(self, _id: str | None = None) -> AsyncResult[R]:
        """Fix the task id now (so results can be known before sending)."""
        options = self["options"]
        if _id is not None:
            options["task_id"] = _id
        options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(options["task_id"], self.app, self.task)

    def __or__(self, other: Signature[Any]) -> Signature[Any]:  # type: ignore[override]
        """``a | b``: a chain (not a dict union)."""
        return _chain_of(self, other, self._app)

    def __ror__(self, other: Signature[Any]) -> Signature[Any]:  # type: ignore[override]
        return _chain_of(other, self, self._app)

    # -- sending -------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send this call; a task registered in the app sends it as ``Task.apply_async``
        does (so ``task_always_eager``, argument checks and parent ids are the same)."""
        call = self.clone(args, kwargs, **options)
        task = call._registered_task()
        if task is not None:
            return task.apply_async(call["args"], call["kwargs"], **call["options"])
        if not call.is_plain and self.app.conf.task_always_eager:
            return call.apply()
        result: AsyncResult[R] = run_sync(lambda: call.asend(self.app))
        return result

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        call = self.clone(args, kwargs, **options)
        task = call._registered_task()
        if task is not None:
            return await task.aapply_async(call["args"], call["kwargs"], **call["options"])
        if not call.is_plain and self.app.conf.task_always_eager:
            return call.apply()
        result: AsyncResult[R] = await call.asend(self.app)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Run this call here and now, nothing sent (``Task.apply``); flows run
        their steps so (eager mode sends them here)."""
        call = self.clone(args, kwargs, **options)
        task = self.app.get_task(call.task)
        return task.apply(call["args"], call["kwargs"], **call["options"])

    def _registered_task(self) -> Task[Any, R] | None:
        """The app's task for a plain call (flows send themselves)."""
        return self.app.tasks.get(self.task) if self.is_plain else None

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function here, with the signature's arguments first."""
        task = self.app.get_task(self.task)
        args = (*self["args"], *args) if not self.immutable else tuple(self["args"])
        return task(*args, **{**self["kwargs"], **kwargs})

    async def asend(self, app: Celeriac) -> Any:
        """Send this signature as it is, eager mode or not (subclasses send their flows)."""
        outgoing = self.outgoing(app)
        await publish(app, [outgoing])
        return AsyncResult(outgoing.message.id, app, self.task)

    def outgoing(self, app: Celeriac) -> Outgoing:
        """This call as one message, for batching (plain task signatures only)."""
        opts = SendOptions.from_kwargs(self["options"])
        return build_outgoing(
            app, self.task, self["args"], self["kwargs"], opts, app.tasks.get(self.task)
        )

    @property
    def is_plain(self) -> bool:
        """A single task call (not a chain, group, chord or map)."""
        return type(self).subtask_type is None

    def __repr__(self) -> str:
        shown = [
            *(repr(a) for a in self["args"]),
            *(f"{k}={v!r}" for k, v in self["kwargs"].items()),
        ]
        return f"{self['task']}({', '.join(shown)}){'!' if self.immutable else ''}"


def _chain_of(first: Any, second: Any, app: Celeriac | None) -> Signature[Any]:
    """``first | second`` as a chain, made as a chain read off the wire is (``flows``
    registers the class when ``canvas`` is imported), so this module need not import it."""
    data = {"task": "celery.chain", "kwargs": {"tasks": [first, second]}, "subtask_type": "chain"}
    return _TYPES["chain"]._from_wire(data, app)


def signature(task: str | Mapping[str, Any], *args: Any, **kwargs: Any) -> Signature[Any]:
    """Celery's ``signature()``: a name, or a dict read off the wire, as a Signature."""
    if isinstance(task, Mapping):
        return Signature.from_dict(task, kwargs.get("app"))
    return Signature(task, *args, **kwargs)


def maybe_signature(value: Any, app: Celeriac | None = None) -> Signature[Any] | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    if isinstance(value, Mapping):
        return Signature.from_dict(value, app)
    raise TypeError(f"expected a signature, not {type(value).__name__}")


def as_signature_list(value: Any, app: Celeriac | None = None) -> list[dict[str, Any]] | None:
    """``link=`` may be one signature or a list of them; the wire wants a list of dicts."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    out = [dict(sig) for item in items if (sig := maybe_signature(item, app)) is not None]
    return out or None
