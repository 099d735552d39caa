"""The one busy policy of every SQLite connection, broker's and result store's.

No connection uses SQLite's busy handler (``timeout=0``): it sleeps a
millisecond at least, when a lease, an ack or a result holds the write lock
for tens of microseconds. Connections on the event loop therefore never wait:
a call there that meets a busy lock goes to its connection's own thread
instead. There ``retrying`` calls it again, from 50 µs doubling up to 5 ms,
for ``BUSY_WAIT`` seconds in all; then the error stands.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

__all__ = ["BUSY_WAIT", "connect", "is_busy", "retrying"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

BUSY_WAIT = 5.0
"""Seconds a call waits for another connection's write lock before it fails."""
FIRST_PAUSE = 0.00005
LONGEST_PAUSE = 0.005


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection in autocommit mode that never waits for a lock (no busy handler).

    Opening runs no statement, so it never meets a busy lock; the caller's
    first statements (pragmas, schema) do, and are retried by the caller.
    Usable from any thread; each caller keeps it to one thread at a time.
    """
    return sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says another connection holds a lock (SQLITE_BUSY or _LOCKED)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def retrying(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """``fn(*args)``, called again while it meets a busy lock, for ``BUSY_WAIT`` seconds.

    Sleeps the calling thread between tries: never call it on the event loop.
    ``fn`` must leave nothing half done when it raises (one statement, or a
    transaction it rolls back).
    """
    deadline = 0.0
    pause = FIRST_PAUSE
    while True:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise
            now = time.monotonic()
            deadline = deadline or now + BUSY_WAIT
            if now >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
