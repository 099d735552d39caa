"""The SQLite broker's beat store: the leader lease and last runs in the broker's file.

Tables (columns and lifetimes in :mod:`celeriac.sqlite.schema`):
``celeriac_beat_lease``, one row: holder, fencing token, expiry;
``celeriac_beat_runs``, one row per entry: its last tick sent.

* Clock: the machine's wall clock, ``time.time()`` read inside the
  transaction. Every process that opens the file runs on the one machine, so
  one clock decides every lapse. ``Lease.idle_since`` is the stored
  ``expires_at`` that the claim found lapsed: the previous holder's last
  renewal plus its ttl, or the time it released the lease.
* Claims, renewals and releases are each one ``BEGIN IMMEDIATE``
  transaction: the write lock is taken before the lease is read, so of any
  number of processes claiming at once exactly one finds it free.
* ``record`` checks the token and upserts the runs in one transaction;
  ``record_writes`` is the same upsert (``RECORD_BEAT_RUN``), each row
  carrying the token it needs, for the broker to run in a publish's
  transaction: a stale token stores nothing, the messages are published all
  the same (the caller checked its lease just before).
* Connection: all of it goes through the broker's publishing connection
  (``synchronous=FULL``, shared by the process's brokers of the file). A
  recorded run must be as durable as the publish it stands for; claims are one
  small transaction every few seconds per beat, so their fsync costs nothing
  worth a connection of their own, and with none the store has nothing to
  close. (The operations plane's NORMAL connection would do for claims: a
  power cut that undid one also killed every holder on the machine.)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

from ..brokers.beat_store import BeatStore, Lease
from ..shared_storage import StorageWrite
from .connection import Connection, make_writes, transaction
from .schema import (
    BEAT_LEASE,
    LIST_BEAT_RUNS,
    RECORD_BEAT_RUN,
    RELEASE_BEAT_LEASE,
    SET_BEAT_LEASE,
)

__all__ = ["SQLiteBeatStore"]

_Claimed = tuple[int, float | None]
"""A claim's token and ``idle_since``."""


class SQLiteBeatStore(BeatStore):
    """The beat store of one ``SQLiteBroker``; see the module docstring."""

    shares_publish = True

    def __init__(self, writer: Callable[[], Connection]):
        """``writer`` returns the broker's publishing connection."""
        self._writer = writer

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        start = time.monotonic()

        def take(db: sqlite3.Connection) -> _Claimed | None:
            now = time.time()
            row: tuple[str, int, float] | None = db.execute(BEAT_LEASE).fetchone()
            token, idle_since = 1, None
            if row is not None:
                current, token, expires_at = row
                if expires_at > now and current != holder:
                    return None
                if expires_at <= now:  # lapsed or released: a new holding
                    token, idle_since = token + 1, expires_at
            db.execute(SET_BEAT_LEASE, (holder, token, now + ttl)).close()
            return token, idle_since

        claimed = await self._writer().run(lambda db: transaction(db, take))
        if claimed is None:
            return None
        return Lease(holder, claimed[0], start + ttl, claimed[1])

    async def last_runs(self) -> dict[str, float]:
        rows = await self._writer().run(lambda db: db.execute(LIST_BEAT_RUNS).fetchall())
        return dict(rows)

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        writes = self.record_writes(lease, runs)

        def store(db: sqlite3.Connection) -> bool:
            row = db.execute(BEAT_LEASE).fetchone()
            if row is None or row[1] != lease.token:
                return False
            make_writes(db, writes)
            return True

        return await self._writer().run(lambda db: transaction(db, store))

    def record_writes(self, lease: Lease, runs: Mapping[str, float]) -> Sequence[StorageWrite]:
        rows = [(name, float(tick), lease.token) for name, tick in runs.items()]
        return [StorageWrite(RECORD_BEAT_RUN, rows)] if rows else []

    async def release(self, lease: Lease) -> None:
        def give_up(db: sqlite3.Connection) -> None:
            db.execute(RELEASE_BEAT_LEASE, (time.time(), lease.token, lease.holder)).close()

        await self._writer().run(give_up)

    async def holder(self) -> tuple[str, float] | None:
        row = await self._writer().run(lambda db: db.execute(BEAT_LEASE).fetchone())
        if row is None or row[2] <= time.time():
            return None
        return row[0], row[2]
