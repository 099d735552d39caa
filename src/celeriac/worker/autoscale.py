"""Autoscale: how many children a process-pool worker wants now, by load.

Celery's rule (``celery.worker.autoscale``), in celeriac's terms. Celery counts
the requests its worker has received and not finished; a celeriac child takes
one task at a time and prefetches nothing more, so "work" here is the tasks
running in the node plus the messages ready in its queues (``Node.backlog``,
which the voice child measures every second: the supervisor opens no
connections). Then:

* more work than processes: grow at once, up to ``max``;
* less: a child idle for ``keepalive`` seconds (Celery's AUTOSCALE_KEEPALIVE,
  here the ``worker_autoscale_keepalive`` setting), with no growth in that
  time either, can go, down to ``min``. The voice (slot 0) never goes.

Only the decision is here; the supervisor starts and stops the children.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .node import Node

__all__ = ["Autoscaler", "SlotLoad", "parse_autoscale"]


def parse_autoscale(value: Any) -> tuple[int, int] | None:
    """``"MAX,MIN"`` (``--autoscale``), ``"MAX"`` or a ``(max, min)`` sequence as
    ``(max, min)``; None or empty: autoscale off. ``min`` is at least 1 (the voice)."""
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        numbers = [int(p) for p in parts if p != ""]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 2) or numbers[0] < 1 or min(numbers) < 0:
        raise ConfigurationError(f"autoscale takes MAX,MIN (like 10,3), not {value!r}")
    high = numbers[0]
    low = numbers[1] if len(numbers) == 2 else 1
    return high, max(1, min(high, low))


@dataclass(frozen=True, slots=True)
class SlotLoad:
    """One running child, as the supervisor sees it."""

    index: int
    idle_for: float
    """Seconds since the child last ran a task (or started)."""


@dataclass(slots=True)
class Autoscaler:
    keepalive: float
    _last_growth: float = float("-inf")

    def wanted(self, node: Node, children: Sequence[SlotLoad], now: float) -> int:
        """How many children ``node`` should have now (``now``: monotonic seconds)."""
        bounds = node.autoscale_bounds
        if bounds is None:
            return node.wanted
        high, low = bounds
        current = max(low, min(high, node.wanted))
        work = sum(node.active(c.index) for c in children) + node.backlog
        if work > current:
            grown = min(work, high)
            if grown > current:
                self._last_growth = now
            return grown
        if now - self._last_growth < self.keepalive:
            return current
        idle = sum(1 for c in children if c.index != 0 and c.idle_for >= self.keepalive)
        return max(low, work, current - idle)
