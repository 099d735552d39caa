"""Delays between looks at a SQLite file, for the idle consumers and result
waiters that nothing can wake (another process wrote).

A look that finds nothing costs a few microseconds (one ``PRAGMA
data_version``), so the first ones come quickly: a reply usually follows
within a millisecond or two. After ``brisk_for`` seconds without one, the
delay doubles up to ``slowest``, so an idle process costs next to nothing.
"""

from __future__ import annotations

import asyncio
import time

from .._sync import may_block

__all__ = ["Backoff", "pause"]


async def pause(seconds: float) -> None:
    """Sleep ``seconds``; under a millisecond, a sync caller's private loop sleeps in the OS.

    Event loops round timers up to the millisecond (epoll and libuv count in
    ms), so ``asyncio.sleep(0.0001)`` sleeps 1 ms. A sync caller waits for
    this call anyway (``celeriac._sync.may_block``), so blocking costs nobody.
    """
    if seconds < 0.001 and may_block():
        time.sleep(seconds)  # noqa: ASYNC251 - deliberate: see the docstring
        await asyncio.sleep(0)
    else:
        await asyncio.sleep(seconds)


class Backoff:
    def __init__(
        self,
        slowest: float,
        *,
        first: float = 0.0001,
        brisk: float = 0.0005,
        brisk_for: float = 0.1,
    ):
        self._slowest = slowest
        self._first = first
        self._brisk = min(brisk, slowest)
        self._brisk_for = brisk_for
        self.reset()

    def reset(self) -> None:
        """Start again from the quickest look (something just happened)."""
        self._delay = self._first
        self._since = time.monotonic()

    def next(self) -> float:
        """Seconds to wait before the next look."""
        delay = self._delay
        brisk = time.monotonic() - self._since < self._brisk_for
        self._delay = min(delay * 2, self._brisk if brisk else self._slowest)
        return delay
