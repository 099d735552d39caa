"""The worker node as one thing: what its processes share, and which one speaks for it.

To Celery's tools a worker is one node (``celery@host``), however many
processes it runs. A celeriac process-pool worker is a supervisor and N
independent children; :class:`Node` is the shared memory (made by the
supervisor before it forks, so every child inherits it) through which they
appear as one:

* per child slot: the pid, the tasks running now, the tasks processed, the
  hard-limit deadline of the running task (the supervisor kills a child stuck
  past it);
* ``wanted``: how many children the supervisor keeps (``pool_grow`` and
  ``pool_shrink`` change it; with autoscale on, the autoscaler owns it, between
  ``autoscale_bounds``); ``capacity`` is the most, fixed before the first fork;
* ``backlog``: the messages waiting in the worker's queues, measured by the
  voice while autoscale is on (the supervisor opens no connections).

The child in slot 0 is the node's *voice*: it alone answers remote-control
commands and sends the worker's own events (online, heartbeat, offline), with
the totals of every slot. A thread, async or solo worker is one process: a
node with one slot, its own voice.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Node", "NodeTotals"]


@dataclass(frozen=True, slots=True)
class NodeTotals:
    active: int
    processed: int
    pids: list[int]


class Node:
    """Counters of every process of one worker, in memory the processes share."""

    def __init__(
        self,
        hostname: str,
        capacity: int,
        wanted: int | None = None,
        autoscale: tuple[int, int] | None = None,
    ):
        self.hostname = hostname
        self.capacity = max(1, capacity)
        self._pid: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._ready: Any = multiprocessing.Array("b", self.capacity, lock=False)
        self._active: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._processed: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._deadline: Any = multiprocessing.Array("d", self.capacity, lock=False)
        self._wanted: Any = multiprocessing.Value("q", 1, lock=False)
        self._bounds: Any = multiprocessing.Array("q", 2, lock=False)  # max, min; 0: off
        self._backlog: Any = multiprocessing.Value("q", 0, lock=False)
        self.supervisor = 0
        """The pid of the process-pool supervisor that forks these processes (0: none)."""
        self.wanted = wanted or self.capacity
        if autoscale is not None:
            self._bounds[:] = list(self._clamp_bounds(*autoscale))

    # --- written by the process in a slot (one writer per slot: no lock needed)

    def occupy(self, index: int) -> None:
        """The calling process takes ``index`` (a fresh child, or the only process)."""
        self._pid[index] = os.getpid()
        self._ready[index] = 0
        self._active[index] = 0
        self._deadline[index] = 0.0

    def vacate(self, index: int) -> None:
        """The supervisor saw the process of ``index`` exit; its running tasks stop
        counting (its processed ones stay in the node's total)."""
        self._pid[index] = 0
        self._ready[index] = 0
        self._active[index] = 0
        self._deadline[index] = 0.0

    def mark_ready(self, index: int) -> None:
        """The process of ``index`` consumes: its queues take messages for it now."""
        self._ready[index] = 1

    def ready(self, index: int) -> bool:
        return bool(self._ready[index])

    def task_started(self, index: int) -> None:
        self._active[index] += 1

    def task_done(self, index: int) -> None:
        self._active[index] -= 1
        self._processed[index] += 1

    def set_deadline(self, index: int, deadline: float) -> None:
        """The wall-clock time past which the supervisor kills this slot's process (0: none)."""
        self._deadline[index] = deadline

    # --- read by anyone

    def deadline(self, index: int) -> float:
        return float(self._deadline[index])

    def pid(self, index: int) -> int:
        return int(self._pid[index])

    def active(self, index: int) -> int:
        """Tasks running now in the process of ``index``."""
        return int(self._active[index])

    def processed(self, index: int) -> int:
        """Tasks the processes of ``index`` finished, the ones before a restart included."""
        return int(self._processed[index])

    def totals(self) -> NodeTotals:
        pids = [int(p) for p in self._pid if p]
        return NodeTotals(
            active=sum(int(a) for a in self._active),
            processed=sum(int(p) for p in self._processed),
            pids=pids,
        )

    # --- the pool's size

    @property
    def wanted(self) -> int:
        """How many processes the supervisor keeps running (clamped to 1..capacity).

        ``pool_grow(n)`` is ``wanted += n``, ``pool_shrink(n)`` is ``wanted -= n``.
        Celery refuses both while autoscale is on (``autoscale_bounds`` is not
        None): the autoscaler would undo them.
        """
        return int(self._wanted.value)

    @wanted.setter
    def wanted(self, processes: int) -> None:
        self._wanted.value = max(1, min(self.capacity, processes))

    @property
    def autoscale_bounds(self) -> tuple[int, int] | None:
        """``(max, min)`` processes while autoscale is on, else None."""
        high, low = int(self._bounds[0]), int(self._bounds[1])
        return (high, low) if high else None

    def set_autoscale(self, max: int | None, min: int | None) -> tuple[int, int]:
        """Change the autoscale range (Celery's ``autoscale`` command); a None keeps
        that bound. Returns the range now in force: ``max`` is at most ``capacity``,
        ``min`` at least 1 (the voice) and at most ``max``. The supervisor grows or
        shrinks the pool into the range at its next tick.

        Raises ValueError when the worker was started without autoscale, as Celery does.
        """
        bounds = self.autoscale_bounds
        if bounds is None:
            raise ValueError("Autoscale not enabled")
        high, low = self._clamp_bounds(
            bounds[0] if max is None else max, bounds[1] if min is None else min
        )
        self._bounds[:] = [high, low]
        return high, low

    def _clamp_bounds(self, high: int, low: int) -> tuple[int, int]:
        high = max(1, min(self.capacity, high))
        return high, max(1, min(high, low))

    @property
    def backlog(self) -> int:
        """Messages ready in the worker's queues, as the voice last measured them
        (only while autoscale is on; 0 otherwise)."""
        return int(self._backlog.value)

    @backlog.setter
    def backlog(self, messages: int) -> None:
        self._backlog.value = max(0, messages)
