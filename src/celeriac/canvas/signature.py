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
        task: str | Mapping[str, Any] | Task[Any, Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        type: Task[Any, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Celeriac | None = None,
        **ex: Any,
    ):
        """Celery's arguments: a task name (or the task itself, or a dict read off
        the wire); options as ``options=`` or as keyword arguments
        (``signature("tasks.add", (2, 2), countdown=10)``)."""
        self._type = type
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
            if not isinstance(task, str):  # the task itself: its name, its app
                self._type = task
                app = task.app if app is None else app
                task = task.name
            super().__init__(
                task=task,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options={**(options or {}), **ex},
                subtask_type=subtask_type or self.subtask_type,
                immutable=immutable,
                chord_size=None,
            )
        self._app = app

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        """Copies the call, shares the app (which holds locks and connections)."""
        new = type(self).__new__(type(self))
        dict.__init__(new, {k: copy.deepcopy(v, memo) for k, v in self.items()})
        new._app, new._type = self._app, self._type
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as Celery's does: the dict (the app and task are found again on load)."""
        return signature, (dict(self),)

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

    # -- fields: read and set as in Celery (``sig.args = (1,)``, ``sig.options.update()``)
    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self["args"])

    @args.setter
    def args(self, value: Sequence[Any]) -> None:
        self["args"] = list(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self["kwargs"]
        return kwargs

    @kwargs.setter
    def kwargs(self, value: Mapping[str, Any]) -> None:
        self["kwargs"] = dict(value)

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @options.setter
    def options(self, value: Mapping[str, Any]) -> None:
        self["options"] = dict(value)

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    @immutable.setter
    def immutable(self, value: bool) -> None:
        self["immutable"] = value

    @property
    def id(self) -> str | None:
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id else None

    @property
    def name(self) -> str:
        """The task's name (Celery's, for duck typing with ``Task.name``)."""
        return self.task

    @property
    def type(self) -> Task[Any, R]:
        """The task this signature calls, looked up in its app (Celery's ``sig.type``)."""
        task: Task[Any, R] = self._type if self._type is not None else self.app.get_task(self.task)
        return task

    @property
    def app(self) -> Celeriac:
        """The app given (or the task's), else the current one. A chain, group or
        chord without one takes its first task's, as in Celery (``_known_app``)."""
        known = self._known_app()
        return current_app() if known is None else known

    def _known_app(self) -> Celeriac | None:
        """The app this signature names, without falling back to the current one."""
        if self._app is not None:
            return self._app
        return self._type.app if self._type is not None else None

    # -- building ----------------------------------------------------------------
    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """A copy; ``args`` are prepended (unless immutable), kwargs and options merged."""
        new = type(self).from_dict(copy.deepcopy(dict(self)), self._app)
        new._type = self._type
        if not self.immutable:
            new["args"] = list(args or ()) + new["args"]
            new["kwargs"].update(kwargs or {})
        new["options"].update(options)
        return new

    partial = clone

    def replace(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Signature[R]:
        """A copy with ``args``, ``kwargs`` or ``options`` replaced (those not None)."""
        new = self.clone()
        if args is not None:
            new.args = args
        if kwargs is not None:
            new.kwargs = kwargs
        if options is not None:
            new.options = options
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

    def on_error(self, errback: Signature[Any]) -> Signature[R]:
        """``link_error`` that returns this signature: ``add.s(2, 2).on_error(cb.s()).delay()``."""
        self.link_error(errback)
        return self

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

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its result (Celery's shorthand)."""
        return self.apply_async().get()

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
        """Call the task here, in this process, as Celery does: the signature's
        arguments first (an immutable signature takes no more). Flows override
        this: calling a chain, group, chord or chunks sends it."""
        if self.immutable:
            args, kwargs = (), {}
        return self.type(*self["args"], *args, **{**self["kwargs"], **kwargs})

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

    def reprcall(self, *args: Any, **kwargs: Any) -> str:
        """``task(args, kwargs)`` with these arguments merged in, as a string."""
        shown = [
            *(repr(a) for a in (*args, *self["args"])),
            *(f"{k}={v!r}" for k, v in {**self["kwargs"], **kwargs}.items()),
        ]
        return f"{self['task']}({', '.join(shown)})"

    def __repr__(self) -> str:
        return self.reprcall()


def shortened(task_name: str, text: str) -> str:
    """``text`` with the module of ``task_name`` kept only where it first appears, as
    in Celery's reprs of a chain: "tasks.add(2, 2) | add(4)"."""
    module = task_name.rpartition(".")[0]
    if not module:
        return text
    head, found, tail = text.partition(module + ".")
    return head + found + tail.replace(module + ".", "") if found else text


def _chain_of(first: Any, second: Any, app: Celeriac | None) -> Signature[Any]:
    """``first | second`` as a chain, made as a chain read off the wire is (``flows``
    registers the class when ``canvas`` is imported), so this module need not import it."""
    data = {"task": "celery.chain", "kwargs": {"tasks": [first, second]}, "subtask_type": "chain"}
    return _TYPES["chain"]._from_wire(data, app)


def signature(
    varies: str | Mapping[str, Any] | Task[Any, Any], *args: Any, **kwargs: Any
) -> Signature[Any]:
    """Celery's ``signature()``: a copy of a signature, a dict read off the wire as
    the right Signature class, or a new one from a task name (or task) and
    :class:`Signature`'s arguments."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies, kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


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
