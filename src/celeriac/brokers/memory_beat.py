"""The memory broker's beat store: process-global, keyed by the broker's URL.

Like the memory broker's queues, every ``memory://`` broker of one URL in the
process shares it, whichever thread's loop uses it; one ``threading.Lock``
per URL guards it. Per URL, for the process's life (or until
:func:`reset_memory_beat`):

* the lease: ``holder`` (str; None: never held), ``token`` (int, 0 before the
  first claim, one more for each new holder), ``expires`` (``time.monotonic()``,
  the one clock of every holder in the process; a release sets it to the
  moment of release, so a lapsed and a released lease look alike).
* ``runs``: entry name -> last tick sent (float, UNIX seconds), only ever later.

``Lease.idle_since`` and ``holder()`` give UNIX times: the monotonic instant
converted by the wall clock's offset at the time of the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .beat_store import BeatStore, Lease

__all__ = ["MemoryBeatStore", "reset_memory_beat"]


@dataclass(slots=True)
class _Beat:
    lock: threading.Lock = field(default_factory=threading.Lock)
    holder: str | None = None
    token: int = 0
    expires: float = 0.0
    runs: dict[str, float] = field(default_factory=dict)

    def held(self, now: float) -> bool:
        return self.holder is not None and self.expires > now


_BEATS: dict[str, _Beat] = {}
_BEATS_LOCK = threading.Lock()


def _beat(url: str) -> _Beat:
    with _BEATS_LOCK:
        return _BEATS.setdefault(url, _Beat())


def reset_memory_beat(url: str | None = None) -> None:
    """Forget the lease and runs of ``url``, or of every ``memory://`` URL; stores
    already made keep working on the emptied state."""
    with _BEATS_LOCK:
        beats = list(_BEATS.values()) if url is None else [_BEATS.get(url) or _Beat()]
    for beat in beats:
        with beat.lock:
            beat.holder, beat.token, beat.expires = None, 0, 0.0
            beat.runs.clear()


def _unix(instant: float, now: float) -> float:
    """The UNIX time of the monotonic ``instant``, given the monotonic ``now``."""
    return time.time() + (instant - now)


class MemoryBeatStore(BeatStore):
    """The beat store of the ``memory://`` brokers of one URL; see the module docstring."""

    def __init__(self, url: str):
        self._beat = _beat(url)

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        beat, start = self._beat, time.monotonic()
        with beat.lock:
            now = time.monotonic()
            if beat.held(now):
                if beat.holder != holder:
                    return None
                beat.expires = now + ttl
                return Lease(holder, beat.token, start + ttl)
            idle_since = None if beat.holder is None else _unix(beat.expires, now)
            beat.holder, beat.token, beat.expires = holder, beat.token + 1, now + ttl
            return Lease(holder, beat.token, start + ttl, idle_since)

    async def last_runs(self) -> dict[str, float]:
        with self._beat.lock:
            return dict(self._beat.runs)

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        beat = self._beat
        with beat.lock:
            if beat.token != lease.token:
                return False
            for name, tick in runs.items():
                if name not in beat.runs or tick > beat.runs[name]:
                    beat.runs[name] = float(tick)
            return True

    async def release(self, lease: Lease) -> None:
        beat = self._beat
        with beat.lock:
            now = time.monotonic()
            if beat.token == lease.token and beat.held(now):
                beat.expires = now

    async def holder(self) -> tuple[str, float] | None:
        beat = self._beat
        with beat.lock:
            now = time.monotonic()
            if beat.holder is None or beat.expires <= now:
                return None
            return beat.holder, _unix(beat.expires, now)
