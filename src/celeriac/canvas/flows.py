"""Chains, groups and chords, sent as Celery protocol v2 carries them.

- A **chain** sends its first task with the rest in the body's ``chain``
  field, reversed; each worker sends the next step with the previous result
  prepended (``worker/middleware/callbacks.py``). A group followed by a task
  inside a chain becomes a chord, as in Celery.
- A **group** sends every member at once, each with the ``group`` id and
  ``group_index`` headers, and saves the member ids in the result store so a
  :class:`GroupResult` can be restored by id.
- A **chord** is a group whose members carry the body in the ``chord`` field
  (with ``chord_size``). Each header task that succeeds marks itself done in
  the result store; the one that completes the count claims the chord and
  sends the body with the header results in order (``worker/middleware/chords.py``).
  Counting is by distinct task id, so a header task delivered twice counts once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import Outgoing
from ..result import AsyncResult, GroupResult
from ..sending import publish
from .signature import Signature, maybe_signature

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["chain", "chord", "group"]


def _unpack(tasks: tuple[Any, ...]) -> tuple[Any, ...]:
    """``group([a, b])`` and ``group(a, b)`` (and a generator) mean the same."""
    if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
        return tuple(tasks[0])
    return tasks


def _signatures(items: Iterable[Any], app: Celeriac | None) -> list[Signature[Any]]:
    out = []
    for item in items:
        sig = maybe_signature(item, app)
        if sig is None:
            raise TypeError("a canvas member cannot be None")
        out.append(sig)
    return out


class chain(Signature[Any]):  # noqa: N801 - Celery's name
    """Tasks run one after another, each getting the previous result first."""

    subtask_type = "chain"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any):
        tasks = _unpack(tasks)
        flat: list[Signature[Any]] = []
        for sig in _signatures(tasks, app):
            flat.extend(sig.tasks if isinstance(sig, chain) else [sig])
        super().__init__("celery.chain", (), {"tasks": flat}, options, app=app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        made = cls(*data["kwargs"]["tasks"], app=app, **(data.get("options") or {}))
        made["args"] = list(data.get("args") or ())
        made["immutable"] = bool(data.get("immutable"))
        return made

    @property
    def tasks(self) -> list[Signature[Any]]:
        return _signatures(self["kwargs"]["tasks"], self._app)

    def __or__(self, other: Signature[Any]) -> Signature[Any]:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chain(...)()`` sends it, as in Celery."""
        return self.apply_async(args, kwargs)

    def _steps(self) -> list[Signature[Any]]:
        """The steps, with a group followed by a task turned into a chord."""
        steps: list[Signature[Any]] = []
        for sig in self.tasks:
            if steps and isinstance(steps[-1], group) and not isinstance(sig, group):
                steps[-1] = chord(steps[-1], sig, app=self._app)
            else:
                steps.append(sig)
        return steps

    def freeze(self, _id: str | None = None) -> Any:
        steps = self._steps()
        self["kwargs"]["tasks"] = steps
        result = None
        for i, step in enumerate(steps):
            parent = result
            result = step.freeze(_id if i == len(steps) - 1 else None)
            if parent is not None:
                result.parent = parent
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Each step here and now, given the previous step's value first."""
        step_args: tuple[Any, ...] = (*(args or ()), *self["args"])
        step_kwargs, last = kwargs, None
        for step in self._steps():
            result = step.apply(step_args, step_kwargs, **options)
            result.parent = last
            last, step_args, step_kwargs = result, (result.get(),), None
        if last is None:
            raise ValueError("an empty chain has nothing to run")
        return last

    async def asend(self, app: Celeriac) -> Any:
        result = self.freeze(self["options"].get("task_id"))
        steps: list[Signature[Any]] = self["kwargs"]["tasks"]
        if not steps:
            raise ValueError("an empty chain has nothing to run")
        options = {k: v for k, v in self["options"].items() if k != "task_id"}
        rest = [dict(step) for step in reversed(steps[1:])]
        first = steps[0].clone(self["args"], None, **options, chain=rest or None)
        await first.asend(app)
        return result


class group(Signature[Any]):  # noqa: N801 - Celery's name
    """Tasks run in parallel; the result is the list of their results, in order."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any):
        tasks = _unpack(tasks)
        flat: list[Signature[Any]] = []
        for sig in _signatures(tasks, app):
            flat.extend(sig.tasks if isinstance(sig, group) else [sig])
        super().__init__("celery.group", (), {"tasks": flat}, options, app=app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        made = cls(*data["kwargs"]["tasks"], app=app, **(data.get("options") or {}))
        made["args"] = list(data.get("args") or ())
        return made

    @property
    def tasks(self) -> list[Signature[Any]]:
        return _signatures(self["kwargs"]["tasks"], self._app)

    def __len__(self) -> int:
        return len(self["kwargs"]["tasks"])

    def freeze(self, _id: str | None = None) -> GroupResult:  # type: ignore[override]
        options = self["options"]
        group_id = _id or options.get("group_id") or options.get("task_id") or str(uuid.uuid4())
        options["group_id"] = group_id
        members = self.tasks
        for index, member in enumerate(members):
            _into_group(member, group_id, index)
        self["kwargs"]["tasks"] = members
        return GroupResult(group_id, [m.freeze() for m in members], app=self.app)

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        result: GroupResult = super().apply_async(args, kwargs, **options)  # type: ignore[assignment]
        return result

    async def aapply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        result: GroupResult = await super().aapply_async(args, kwargs, **options)  # type: ignore[assignment]
        return result

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Every member here and now, in order."""
        given = (*(args or ()), *self["args"])
        members = [member.apply(given, kwargs, **options) for member in self.tasks]
        group_id = self["options"].get("group_id") or str(uuid.uuid4())
        return GroupResult(group_id, members, app=self.app)

    async def asend(self, app: Celeriac) -> GroupResult:
        result = self.freeze(self["options"].get("group_id"))
        members: list[Signature[Any]] = self["kwargs"]["tasks"]
        shared = {k: v for k, v in self["options"].items() if k not in ("group_id", "task_id")}
        batch: list[Outgoing] = []
        for member in members:
            call = member.clone(self["args"], None, **{**shared, **_group_keys(member)})
            if call.is_plain:
                batch.append(call.outgoing(app))
            else:
                await call.asend(app)
        await result.asave_members()
        if batch:
            await publish(app, batch)
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)


def _into_group(member: Signature[Any], group_id: str, index: int) -> None:
    """Mark a group member (or, for a chain, its last task) with the group headers."""
    target = member
    if isinstance(member, chain):
        steps = member._steps()
        member["kwargs"]["tasks"] = steps
        target = steps[-1]
    target["options"]["group_id"] = group_id
    target["options"]["group_index"] = index


def _group_keys(member: Signature[Any]) -> dict[str, Any]:
    options = member["options"]
    return {k: options[k] for k in ("group_id", "group_index") if k in options}


class chord(Signature[Any]):  # noqa: N801 - Celery's name
    """A group (the header) and a task (the body) that gets the list of their results."""

    subtask_type = "chord"

    def __init__(
        self,
        header: Any,
        body: Any = None,
        *,
        app: Celeriac | None = None,
        **options: Any,
    ):
        head = header if isinstance(header, group) else group(header, app=app)
        kwargs: dict[str, Any] = {"header": head, "body": maybe_signature(body, app), "kwargs": {}}
        super().__init__("celery.chord", (), kwargs, options, app=app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        kwargs = data["kwargs"]
        header = Signature.from_dict(kwargs["header"], app)
        made = cls(header, kwargs.get("body"), app=app, **(data.get("options") or {}))
        made["args"] = list(data.get("args") or ())
        return made

    @property
    def header(self) -> group:
        head = self["kwargs"]["header"]
        if isinstance(head, group):
            return head
        made = group.from_dict(head, self._app)
        assert isinstance(made, group)
        return made

    @property
    def body(self) -> Signature[Any] | None:
        return maybe_signature(self["kwargs"]["body"], self._app)

    def __call__(self, body: Any = None, **options: Any) -> AsyncResult[Any]:
        """``chord(header)(body)``: send it, as Celery's shorthand does."""
        made = chord(self.header, body if body is not None else self.body, app=self._app)
        return made.apply_async(**options)

    def freeze(self, _id: str | None = None) -> AsyncResult[Any]:
        body = self.body
        if body is None:
            raise ValueError("a chord needs a body: chord(header)(body) or chord(header, body)")
        header = self.header
        group_id = self["options"].get("group_id") or str(uuid.uuid4())
        header_result = header.freeze(group_id)
        body_result = body.freeze(_id or self["options"].get("task_id"))
        body["chord_size"] = len(header)
        body_result.parent = header_result
        self["kwargs"]["header"], self["kwargs"]["body"] = header, body
        self["options"]["group_id"] = group_id
        return body_result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """The header here and now, then the body with the list of its values."""
        body = self.body
        if body is None:
            raise ValueError("a chord needs a body: chord(header)(body) or chord(header, body)")
        values = self.header.apply((*(args or ()), *self["args"]), kwargs).get()
        return body.apply((values,), **options)

    async def asend(self, app: Celeriac) -> AsyncResult[Any]:
        result = self.freeze(self["options"].get("task_id"))
        header: group = self["kwargs"]["header"]
        body: Signature[Any] = self["kwargs"]["body"]
        for follow_up in ("chain", "link", "link_error"):  # what comes after the chord
            if self["options"].get(follow_up):
                body["options"][follow_up] = self["options"].pop(follow_up)
        if len(header) == 0:
            await body.clone(([],)).asend(app)
            return result
        embedded = dict(body)
        for member in header["kwargs"]["tasks"]:
            target = member["kwargs"]["tasks"][-1] if isinstance(member, chain) else member
            target["options"]["chord"] = embedded
        header["args"] = list(self["args"]) + list(header["args"])
        await header.asend(app)
        return result
