"""Per-task rate limits (``"10/s"``, ``"100/m"``, ``"1000/h"``), per worker.

A worker of N processes gives each process 1/N of the rate. A task over its
rate is handed back to the broker, visible again when a token is due: it
never waits in worker memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...errors import ConfigurationError
from ..context import WorkerContext
from ..job import Job
from .base import Defer, Middleware, Skip

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | float | int | None) -> float | None:
    """Tasks per second for a Celery rate string; None or 0 means unlimited."""
    if rate is None or rate in {"", 0}:
        return None
    if isinstance(rate, int | float):
        return float(rate)
    count, _, unit = rate.partition("/")
    try:
        per_second = float(count) / _UNITS[unit or "s"]
    except (ValueError, KeyError):
        raise ConfigurationError(
            f"bad rate limit {rate!r}; use e.g. '10/s', '100/m', '1000/h'"
        ) from None
    return per_second or None


@dataclass(slots=True)
class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Take a token; return 0.0, or the seconds until one is due."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimits(Middleware):
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[str | float | int | None, TokenBucket | None]] = {}
        """Per task name: the rate it was made for, and the bucket (None: no limit).
        A new rate (``control rate_limit`` sets the task's) makes a new bucket."""

    async def before_task(self, ctx: WorkerContext, job: Job) -> Skip | Defer | None:
        now = time.monotonic()
        rate_limit = job.task.rate_limit
        known = self._buckets.get(job.name)
        if known is None or known[0] != rate_limit:
            known = self._buckets[job.name] = (rate_limit, _bucket(rate_limit, ctx.processes, now))
        bucket = known[1]
        if bucket is None:
            return None
        wait = bucket.take(now)
        return Defer(wait) if wait > 0 else None


def _bucket(rate_limit: str | float | int | None, processes: int, now: float) -> TokenBucket | None:
    """This process's share of a task's rate, or None when it has no limit."""
    rate = parse_rate(rate_limit)
    if rate is None:
        return None
    share = rate / max(1, processes)
    return TokenBucket(share, max(1.0, share), 1.0, now)
