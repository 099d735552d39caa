"""``Task.map``, ``Task.starmap`` and ``Task.chunks``, with Celery's built-in task names.

``celery.map`` / ``celery.starmap`` run one task's function over a list in a
single worker call; ``chunks`` splits a list into a group of starmaps. The
built-in tasks are registered in every app under Celery's names, so the
messages are the same as Celery's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..result import GroupResult
from .flows import group as _group
from .signature import Signature

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["chunks", "register_builtins", "xmap", "xstarmap"]


class xmap(Signature[list[Any]]):  # noqa: N801 - Celery's name
    """``task.map(items)``: one call of ``celery.map``, returning ``[task(i) for i in items]``."""

    subtask_type = "xmap"
    builtin = "celery.map"
    star = ""

    def __init__(
        self, task: Signature[Any], it: Iterable[Any], app: Celeriac | None = None, **options: Any
    ):
        kwargs = {"task": dict(task), "it": list(it)}
        app = task._known_app() if app is None else app  # the task's app, as a flow's
        super().__init__(self.builtin, (), kwargs, options, immutable=True, app=app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        return cls(
            Signature(data["kwargs"]["task"]),
            data["kwargs"]["it"],
            app,
            **(data.get("options") or {}),
        )

    @property
    def is_plain(self) -> bool:
        return True  # one message to one built-in task

    def __repr__(self) -> str:
        return f"[{self['kwargs']['task']['task']}({self.star}x) for x in {self['kwargs']['it']!r}]"


class xstarmap(xmap):  # noqa: N801 - Celery's name
    """``task.starmap(items)``: ``[task(*args) for args in items]`` in one call."""

    subtask_type = "xstarmap"
    builtin = "celery.starmap"
    star = "*"


class chunks(Signature[list[list[Any]]]):  # noqa: N801 - Celery's name
    """``task.chunks(items, n)``: a group of starmaps over ``n``-sized slices of ``items``."""

    subtask_type = "chunks"

    def __init__(
        self,
        task: Signature[Any],
        it: Iterable[Any],
        n: int,
        app: Celeriac | None = None,
        **options: Any,
    ):
        if n < 1:
            raise ValueError("chunks need n >= 1")
        kwargs = {"task": dict(task), "it": [list(args) for args in it], "n": n}
        app = task._known_app() if app is None else app  # the task's app, as a flow's
        super().__init__("celery.chunks", (), kwargs, options, immutable=True, app=app)

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], app: Celeriac | None) -> Signature[Any]:
        kw = data["kwargs"]
        return cls(
            Signature(kw["task"]), kw["it"], int(kw["n"]), app, **(data.get("options") or {})
        )

    def __repr__(self) -> str:
        kw = self["kwargs"]
        return f"celery.chunks(task={Signature(kw['task'])!r}, it={kw['it']!r}, n={kw['n']})"

    def group(self) -> _group:
        """The group of ``celery.starmap`` calls this stands for, one per slice."""
        task: Signature[Any] = Signature(self["kwargs"]["task"], app=self._app)
        items, n = self["kwargs"]["it"], self["kwargs"]["n"]
        parts = [xstarmap(task, items[i : i + n], app=self._app) for i in range(0, len(items), n)]
        return _group(parts, app=self._app, **self["options"])

    # Sent, run or called, chunks are their group, as in Celery's client.
    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply_async(args, kwargs, **options)

    async def aapply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return await self.group().aapply_async(args, kwargs, **options)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply(args, kwargs, **options)

    def __call__(self, **options: Any) -> GroupResult:
        """``task.chunks(it, n)()`` sends the group, as in Celery."""
        return self.apply_async(**options)

    def freeze(self, _id: str | None = None) -> Any:
        return self.group().freeze(_id)

    async def asend(self, app: Celeriac) -> Any:
        return await self.group().asend(app)


def register_builtins(app: Celeriac) -> None:
    """Celery's built-in canvas tasks, in ``app``'s registry."""

    @app.task(name="celery.map")
    def celery_map(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fn = app.get_task(str(task["task"]))
        return [fn(item) for item in it]

    @app.task(name="celery.starmap")
    def celery_starmap(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fn = app.get_task(str(task["task"]))
        return [fn(*args) for args in it]
