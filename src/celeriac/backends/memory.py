"""The ``memory://`` result store: one process, shared by every app, thread and loop in it.

Like kombu's memory transport, the store is process-global and keyed by URL:
two ``Celeriac`` objects configured with ``memory://`` see the same results,
whichever thread or event loop they run on; ``memory://other`` is a separate
store. Nothing survives the process. Tests call :func:`reset` between cases.

Each store holds, under one ``threading.Lock``:

- ``entries``: key -> ``_Entry(value, expires_at, seq, fence)``; ``expires_at``
  is on the ``time.monotonic()`` clock, ``None`` for no expiry; ``seq`` numbers
  the write; ``fence`` is the write's (``ResultBackend.store``), None if
  unfenced. Lives until deleted, expired or :func:`reset`.
- ``expiry``: a heap of ``(expires_at, seq, key)``, one per write with an
  expiry, so each write removes the already expired entries at O(log n).
- ``members``: key -> ``(set of members, expires_at)`` for group counting;
  an expired set counts as empty. Lives until expired and touched again, or
  :func:`reset`.
- ``waiters``: key -> the ``(loop, future)`` of each coroutine waiting for a
  write of that key; a write resolves them with ``loop.call_soon_threadsafe``,
  so waiting never polls, even across threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field

from .base import Changed, ResultBackend

__all__ = ["MemoryBackend", "reset"]

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]


@dataclass(frozen=True, slots=True)
class _Entry:
    value: bytes
    expires_at: float | None
    seq: int
    fence: int | None = None


@dataclass(slots=True)
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: dict[str, _Entry] = field(default_factory=dict)
    expiry: list[tuple[float, int, str]] = field(default_factory=list)
    members: dict[str, tuple[set[str], float | None]] = field(default_factory=dict)
    waiters: dict[str, list[_Waiter]] = field(default_factory=dict)

    def live(self, key: str, now: float) -> _Entry | None:
        entry = self.entries.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
            return None
        return entry

    def purge_expired(self, now: float) -> None:
        while self.expiry and self.expiry[0][0] <= now:
            _, seq, key = heapq.heappop(self.expiry)
            entry = self.entries.get(key)
            if entry is not None and entry.seq == seq:
                del self.entries[key]

    def wake(self, key: str) -> None:
        for loop, future in self.waiters.pop(key, ()):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to wake
                loop.call_soon_threadsafe(_resolve, future)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()
_seq = itertools.count(1)  # next() is atomic under the GIL


def _store_for(url: str) -> _Store:
    with _stores_lock:
        return _stores.setdefault(url, _Store())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def reset() -> None:
    """Forget every memory store of the process (for tests); current waiters are woken."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        with store.lock:
            store.entries.clear()
            store.expiry.clear()
            store.members.clear()
            for key in list(store.waiters):
                store.wake(key)


class MemoryBackend(ResultBackend):
    """Results in this process's memory, shared by URL across apps, threads and loops."""

    scheme = "memory"

    @property
    def _store(self) -> _Store:
        # Looked up on each use, so an instance made before reset() does not
        # keep using the discarded store.
        return _store_for(self.url)

    async def connect(self) -> None:
        """Nothing to reach: the store is created on first use."""

    async def close(self) -> None:
        """Nothing to release: the results stay for the other users of the URL."""

    async def _get(self, key: str) -> bytes | None:
        store = self._store
        with store.lock:
            entry = store.live(key, time.monotonic())
        return entry.value if entry else None

    async def _set(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> None:
        store = self._store
        now = time.monotonic()
        seq = next(_seq)
        expires_at = None if expires is None else now + expires
        with store.lock:
            store.purge_expired(now)
            if fence is not None:
                stored = store.live(key, now)
                if stored is not None and stored.fence is not None and stored.fence > fence:
                    return
            store.entries[key] = _Entry(value, expires_at, seq, fence)
            if expires_at is not None:
                heapq.heappush(store.expiry, (expires_at, seq, key))
            store.wake(key)

    async def _add_member(self, key: str, member: str, expires: float | None) -> int:
        store = self._store
        now = time.monotonic()
        expires_at = None if expires is None else now + expires
        with store.lock:
            members, old_expiry = store.members.get(key, (set(), None))
            if old_expiry is not None and old_expiry <= now:
                members = set()
            members.add(member)
            store.members[key] = (members, expires_at)
            return len(members)

    async def _add(self, key: str, value: bytes, expires: float | None) -> bool:
        store = self._store
        now = time.monotonic()
        with store.lock:
            if store.live(key, now) is not None:
                return False
            seq = next(_seq)
            expires_at = None if expires is None else now + expires
            store.entries[key] = _Entry(value, expires_at, seq)
            store.wake(key)
            if expires_at is not None:
                heapq.heappush(store.expiry, (expires_at, seq, key))
            return True

    async def _delete(self, key: str) -> None:
        store = self._store
        with store.lock:
            store.entries.pop(key, None)
            store.wake(key)

    async def _wait_changed(
        self, key: str, seen: bytes | None, timeout: float | None, poll: float
    ) -> Changed | None:
        """Wait for a write of ``key`` (``poll`` is ignored: writes wake us)."""
        store = self._store
        loop = asyncio.get_running_loop()
        waiter: _Waiter = (loop, loop.create_future())
        with store.lock:
            entry = store.live(key, time.monotonic())
            if (entry.value if entry else None) != seen:  # written since it was read
                return None
            store.waiters.setdefault(key, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter[1]
        except TimeoutError:
            pass
        finally:
            with store.lock:
                waiting = store.waiters.get(key)
                if waiting is not None and waiter in waiting:
                    waiting.remove(waiter)
                    if not waiting:
                        del store.waiters[key]
        return None
