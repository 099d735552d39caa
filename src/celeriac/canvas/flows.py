"""Chains, groups and chords, sent as Celery protocol v2 carries them.

- A **chain** sends its first task with the rest in the body's ``chain``
  field, reversed; each worker sends the next step with the previous result
  prepended (``worker/middleware/callbacks.py``). A group followed by a task
  inside a chain becomes a chord, as in Celery.
- A **group** sends every member at once, each with the ``group`` id and
  ``group_index`` headers, and saves the member ids in the result store so a
  :class:`GroupResult` can be restored by id.
- A **chord** is a group whose members carry the body in the ``chord`` field.
  Before the header goes out, the result store is told its size (on Redis,
  Celery's ``.s`` key); each header task's final state goes to the store,
  and the one that completes the chord sends the body with the header
  results in group order (``worker/middleware/chords.py``). A header task
  delivered twice counts once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import Outgoing
from ..result import AsyncResult, GroupResult
from ..sending import publish
from ..transactions.current import refuse_inside
from .signature import Signature, as_signature_list, maybe_signature, shortened

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

    def _known_app(self) -> Celeriac | None:
        """The app given, else the first task's, as in Celery."""
        return self._app or _first_known(self.tasks[:1])

    def __or__(self, other: Signature[Any]) -> Signature[Any]:  # type: ignore[override]
        return chain(*self.tasks, other, app=self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chain(...)()`` sends it, as in Celery."""
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        tasks = self.tasks
        if not tasks:
            return f"<chain@{id(self):#x}: empty>"
        return shortened(tasks[0].task, " | ".join(repr(t) for t in tasks))

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[Any]:
        """A copy; partial ``args`` go to the first task when sent, ``kwargs`` to it now
        (Celery's ``chain.run``), options to the chain."""
        new = super().clone(args, None, **options)
        if kwargs and not self.immutable:
            steps = _signatures(new["kwargs"]["tasks"], self._app)
            steps[0] = steps[0].clone(None, kwargs)
            new["kwargs"]["tasks"] = steps
        return new

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
        _link_steps(steps, options.pop("link", None), options.pop("link_error", None), app)
        after = list(options.pop("chain", None) or ())  # what follows this chain, reversed
        rest = after + [dict(step) for step in reversed(steps[1:])]
        first = steps[0].clone(self["args"], None, **options, chain=rest or None)
        await first.asend(app)
        return result


def _link_steps(steps: list[Signature[Any]], link: Any, link_error: Any, app: Celeriac) -> None:
    """A chain's ``link`` callbacks follow its last step; its ``link_error`` errbacks
    are on every step, whichever fails (as Celery's ``chain.run`` does)."""
    if callbacks := as_signature_list(link, app):
        steps[-1]["options"].setdefault("link", []).extend(callbacks)
    for errback in as_signature_list(link_error, app) or ():
        for step in steps:
            step["options"].setdefault("link_error", []).append(errback)


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

    def _known_app(self) -> Celeriac | None:
        """The app given, else the first task's, as in Celery."""
        return self._app or _first_known(self.tasks[:1])

    def __len__(self) -> int:
        return len(self["kwargs"]["tasks"])

    def __repr__(self) -> str:
        tasks = self.tasks
        return shortened(tasks[0].task, f"group({tasks!r})") if tasks else "group(<empty>)"

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[Any]:
        """A copy; partial ``args`` go to every member when sent, ``kwargs`` to each
        now (Celery's ``group.apply_async``), options to the group."""
        new = super().clone(args, None, **options)
        if kwargs and not self.immutable:
            members = _signatures(new["kwargs"]["tasks"], self._app)
            new["kwargs"]["tasks"] = [member.clone(None, kwargs) for member in members]
        return new

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Celery's: the callback follows the *first* member only, immutable (it
        cannot get every member's value: use a chord for that)."""
        return self.tasks[0].link(callback.clone().set(immutable=True))

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Celery's: any member may fail, so each gets a copy of the errback."""
        for member in self.tasks:
            member.link_error(errback.clone())
        return errback

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Stagger the members: ``countdown`` ``start``, ``start + step``, ... (at most
        ``stop``), as Celery's ``group.skew``."""
        countdown = start
        for member in self.tasks:
            member.set(countdown=countdown)
            if stop is None or countdown + step <= stop:
                countdown += step
        return self

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
        _no_links(options)
        result: GroupResult = super().apply_async(args, kwargs, **options)  # type: ignore[assignment]
        return result

    async def aapply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        _no_links(options)
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

    def __call__(self, *args: Any, **options: Any) -> GroupResult:
        """``group(...)(*args, **options)`` sends it, as in Celery (keywords are options)."""
        return self.apply_async(args, **options)


def _no_links(options: Mapping[str, Any]) -> None:
    """Celery's rule: a group sent with ``link``/``link_error`` is refused."""
    if options.get("link") is not None:
        raise TypeError("Cannot add link to group: use a chord")
    if options.get("link_error") is not None:
        raise TypeError("Cannot add link to group: do that on individual tasks")


def _first_known(members: Iterable[Signature[Any]]) -> Celeriac | None:
    """The app of the first of ``members`` that knows one: a flow sends where its tasks live."""
    return next((app for m in members if (app := m._known_app()) is not None), None)


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

    def __repr__(self) -> str:
        """Celery's: ``%xsum([add(1, 1), add(2, 2)])``."""
        body, header = self.body, self.header.tasks
        if body is None:
            return f"<chord without body: {header!r}>"
        if isinstance(body, chain):
            first, rest = body.tasks[0], chain(body.tasks[1:], app=self._app)
            return shortened(first.task, f"%({first.reprcall(header)} | {rest!r})")
        return "%" + shortened(body.task, body.reprcall(header))

    def _known_app(self) -> Celeriac | None:
        """The app given, else the first header task's, else the body's, as in Celery."""
        body = self.body
        return self._app or _first_known(
            [*self.header.tasks[:1], *([body] if body is not None else [])]
        )

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
        refuse_inside(app, "a chord", "its counter is set in the result store, outside it")
        await (await app.abackend()).set_chord_size(self["options"]["group_id"], len(header))
        await header.asend(app)
        return result
