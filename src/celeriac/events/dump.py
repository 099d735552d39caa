"""Events as lines of text, in the format of ``celery events --dump`` (``celery.events.dumper``).

``<hostname> [<timestamp>] <what>: <task> <field>=<value>, ...``: worker
events say ``started``, ``heartbeat`` or ``shutdown``; a task event names the
task (``name(uuid) args=... kwargs=...``, remembered from its task-received
or task-sent event) and lists its other fields sorted by name.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

__all__ = ["Dumper"]

HUMAN_TYPES = {
    "worker-offline": "shutdown",
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
}

TASK_NAMES_KEPT = 0xFFF
"""How many task descriptions are remembered (as many as Celery's dumper keeps)."""


def humanize_type(type_: str) -> str:
    return HUMAN_TYPES.get(type_.lower()) or type_.lower().replace("-", " ")


class Dumper:
    """Formats events as Celery's dumper prints them, remembering recent task names."""

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, str] = OrderedDict()

    def line(self, event: dict[str, Any]) -> str:
        """The line for ``event`` (a received event; it is not changed)."""
        ev = dict(event)
        timestamp = datetime.fromtimestamp(ev.pop("timestamp"), UTC)
        type_ = str(ev.pop("type")).lower()
        hostname = ev.pop("hostname", None)
        task: str | None = None
        if type_.startswith("task-"):
            uuid = str(ev.pop("uuid", ""))
            if type_ in ("task-received", "task-sent"):
                task = (
                    f"{ev.pop('name', None)}({uuid}) args={ev.pop('args', None)} "
                    f"kwargs={ev.pop('kwargs', None)}"
                )
                self._remember(uuid, task)
            else:
                task = self._recall(uuid)
        sep = ":" if ev else ""
        fields = ", ".join(f"{key}={ev[key]}" for key in sorted(ev))
        what = humanize_type(type_) + sep if task is None else f"{humanize_type(type_)}{sep} {task}"
        return f"{hostname} [{timestamp}] {what} {fields}"

    def _recall(self, uuid: str) -> str:
        """The task's description, or ``""``; a recalled one is kept longest (an LRU)."""
        task = self._tasks.get(uuid)
        if task is None:
            return ""
        self._tasks.move_to_end(uuid)
        return task

    def _remember(self, uuid: str, task: str) -> None:
        self._tasks[uuid] = task
        self._tasks.move_to_end(uuid)
        while len(self._tasks) > TASK_NAMES_KEPT:
            self._tasks.popitem(last=False)
