"""The worker node as one thing: what its processes share, and which one speaks for it.

To Celery's tools a worker is one node (``celery@host``), however many
processes it runs. A celeriac process-pool worker is a supervisor and N
independent children; :class:`Node` is the shared memory (made by the
supervisor before it forks, so every child inherits it) through which they
appear as one:

* per child slot: the pid, the tasks running now, the tasks processed, the
  hard-limit deadline of the running task (the supervisor kills a child stuck
  past it);
* ``wanted``: how many children the supervisor keeps (``pool_grow``,
  ``pool_shrink`` and the autoscaler change it; ``capacity`` is the most).

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

    def __init__(self, hostname: str, capacity: int, wanted: int | None = None):
        self.hostname = hostname
        self.capacity = max(1, capacity)
        self._pid: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._active: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._processed: Any = multiprocessing.Array("q", self.capacity, lock=False)
        self._deadline: Any = multiprocessing.Array("d", self.capacity, lock=False)
        self._wanted: Any = multiprocessing.Value("q", wanted or self.capacity, lock=False)

    # --- written by the process in a slot (one writer per slot: no lock needed)

    def occupy(self, index: int) -> None:
        """The calling process takes ``index`` (a fresh child, or the only process)."""
        self._pid[index] = os.getpid()
        self._active[index] = 0
        self._deadline[index] = 0.0

    def vacate(self, index: int) -> None:
        """The supervisor saw the process of ``index`` exit; its running tasks stop
        counting (its processed ones stay in the node's total)."""
        self._pid[index] = 0
        self._active[index] = 0
        self._deadline[index] = 0.0

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
        """How many processes the supervisor keeps running."""
        return int(self._wanted.value)

    @wanted.setter
    def wanted(self, processes: int) -> None:
        self._wanted.value = max(1, min(self.capacity, processes))
