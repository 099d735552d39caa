"""The Lamport clock every event carries (kombu's ``LamportClock``), one per process.

A process moves its clock forward before each event it sends and, on each
event or command it receives, sets it past the clock it saw, so that events of
different nodes can be ordered even when their wall clocks disagree. Flower
and ``celery events`` read the ``clock`` field this way. One clock per process
(Celery has one per app; an app rarely shares a process with another that
sends events, and one per process is what the ordering needs).
"""

from __future__ import annotations

import threading

__all__ = ["LamportClock", "process_clock"]


class LamportClock:
    """A counter that only grows: :meth:`forward` before sending, :meth:`adjust` on receiving."""

    def __init__(self, value: int = 0):
        self.value = value
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        with self._lock:
            self.value = max(self.value, other) + 1
            return self.value


_CLOCK = LamportClock()


def process_clock() -> LamportClock:
    """This process's clock (events, remote-control commands and replies share it)."""
    return _CLOCK
