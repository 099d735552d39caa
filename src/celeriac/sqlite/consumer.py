"""The SQLite broker's consumer: leases, acks and heartbeats on one connection of its own.

Fetch is one ``BEGIN IMMEDIATE`` transaction that makes the carried writes
and acks, picks rows and leases them (``pick_sql``, ``LEASE``), right here on
the event loop on a connection that never waits for a lock; when another
writer holds it, the same work goes to the consumer's ``Connection`` thread,
which waits there (:mod:`celeriac.sqlite.busy`). An idle consumer looks again
with ``Backoff`` (every 0.1-0.5 ms for the first 100 ms, then doubling up to
``poll_interval``), skips the query while ``PRAGMA data_version`` says no
other connection wrote, sleeps no longer than until the earliest delayed row
or lease comes due, and is woken at once by a publish through the same broker
object (``Doorbell``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial

import orjson

from ..brokers.base import Broker, Consumer, Delivery, logger
from ..brokers.message_columns import decode_message, raw_bytes
from ..errors import BrokerError, MessageError
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .busy import is_busy
from .connection import Connection, broker_connection, make_writes, open_fast, transaction
from .polling import Backoff
from .schema import (
    ACK,
    DEAD_LETTER,
    DEAD_LETTER_ROW,
    DELETE_OWNED,
    HEARTBEAT,
    LEASE,
    RELEASE,
    Row,
    next_visible_sql,
    pick_sql,
)

__all__ = ["Doorbell", "SQLiteConsumer"]


class Doorbell:
    """Rung by each publish through one broker object; its idle consumers nap until then."""

    def __init__(self) -> None:
        self._rung: asyncio.Event | None = None

    def ring(self) -> None:
        if self._rung is not None:
            self._rung.set()
            self._rung = None

    async def nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a ring ends the nap early."""
        if self._rung is None:
            self._rung = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), seconds)


class SQLiteConsumer(Consumer):
    """Leases rows to one owner token: the name plus a random suffix.

    The suffix keeps a restarted worker of the same name from renewing (by
    heartbeat) the leases its dead predecessor held. Made by
    ``SQLiteBroker.consumer``, which hands it the broker's ``Doorbell`` and the
    set of connections the broker closes with it.
    """

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str],
        name: str,
        *,
        doorbell: Doorbell,
        connections: set[Connection],
    ):
        super().__init__(broker, queues, name)
        self._doorbell = doorbell
        self._connections = connections
        self._owner = f"{name}#{secrets.token_hex(4)}"
        self._conn = broker_connection(broker.url, "NORMAL")
        connections.add(self._conn)
        self._pick = pick_sql(len(self.queues))
        self._next_visible_sql = next_visible_sql(len(self.queues))
        self._fast: sqlite3.Connection | None = None
        """Leases taken on the event loop itself; never waits for a lock (see ``_take_here``)."""
        self._data_version = -1
        self._idle = False
        self._next_visible = 0.0

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """The writes, the acks and the first lease in one transaction; then, while
        nothing is visible, looks again with backoff until ``timeout``."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(self.options.poll_interval)
        again: Callable[[sqlite3.Connection], list[Row]] = partial(self._look, limit=limit)
        look = again
        if acks or writes:
            ids = orjson.dumps([d.tag for d in acks])
            look = partial(self._ack_and_lease, ids=ids, limit=limit, writes=writes)
        while True:
            rows = self._take_here(look)
            if rows is None:  # the lock is taken: wait for it on the connection's thread
                rows = await self._take_on_thread(look)
            look = again  # the acks are settled by now
            if rows:
                deliveries = await self._deliveries(rows)
                if deliveries:
                    return deliveries
                continue  # every row was garbage, now dead-lettered: look again at once
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._doorbell.nap(
                min(backoff.next(), remaining, max(self._next_visible - time.time(), 0.0))
            )

    async def _deliveries(self, rows: list[Row]) -> list[Delivery]:
        """Deliveries of leased rows; rows that hold no message go to the dead letters.

        If that move fails, every row goes back (uncounted) for the next fetch.
        """
        deliveries: list[Delivery] = []
        garbage: list[tuple[Row, str]] = []
        for row in rows:
            try:
                deliveries.append(Delivery(decode_message(row[3:]), row[1], row[2] + 1, row[0]))
            except MessageError as exc:
                garbage.append((row, f"undecodable message row: {exc}"))
        if garbage:
            try:
                await self._bury_garbage(garbage)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._release_rows(rows)
                raise
        return deliveries

    async def _bury_garbage(self, garbage: list[tuple[Row, str]]) -> None:
        """Move leased rows into the dead-letter table as raw bytes, with their reasons."""

        def move(db: sqlite3.Connection) -> None:
            now = time.time()
            for row, reason in garbage:
                db.execute(DEAD_LETTER_ROW, (reason, now, raw_bytes(row[3:]), row[0], self._owner))
                db.execute(DELETE_OWNED, (row[0], self._owner))

        await self._conn.run(lambda db: transaction(db, move))
        for row, reason in garbage:
            logger.error("dead-lettered row %d from queue %r: %s", row[0], row[1], reason)

    async def _take_on_thread(self, look: Callable[[sqlite3.Connection], list[Row]]) -> list[Row]:
        job = self._conn.submit(look)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # The rows may be leased already: hand them back before giving up.
            await self._release_rows(await job)
            raise

    def _take_here(self, look: Callable[[sqlite3.Connection], list[Row]]) -> list[Row] | None:
        """Run ``look`` right here on the loop, or None if another writer holds the lock.

        A lease transaction takes tens of microseconds, less than the hop to
        the connection's thread; but waiting for another process's write lock
        must not block the loop, so this connection never waits (busy timeout
        0) and a busy database sends the call to the thread instead.
        """
        if self._fast is None:
            try:
                self._fast = open_fast(self.broker.url)
            except sqlite3.Error:
                return None
        try:
            return look(self._fast)
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                self._data_version = -1  # the thread's connection has its own counter
                return None
            raise BrokerError(f"SQLite broker {redact_url(self.broker.url)}: {exc}") from exc

    async def _release_rows(self, rows: list[Row]) -> None:
        ids = [r[0] for r in rows]
        if ids:
            await self._conn.run(lambda db: self._release_ids(db, ids, None, 1))

    def _look(self, db: sqlite3.Connection, limit: int) -> list[Row]:
        """Lease up to ``limit`` visible rows, skipping the query when nothing changed."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if self._idle and version == self._data_version and time.time() < self._next_visible:
            return []
        self._data_version = version
        params = (time.time(), limit, *self.queues)
        if self._idle and db.execute(self._pick, params).fetchone() is None:
            (earliest,) = db.execute(self._next_visible_sql, self.queues).fetchone()
            self._next_visible = float("inf") if earliest is None else earliest
            return []
        rows = transaction(db, lambda db: self._lease(db, limit))
        self._idle = not rows
        if not rows:
            self._next_visible = 0.0  # look again (and fetch the earliest) next time
        return rows

    def _ack_and_lease(
        self, db: sqlite3.Connection, ids: bytes, limit: int, writes: Sequence[StorageWrite]
    ) -> list[Row]:
        def work(db: sqlite3.Connection) -> list[Row]:
            self._settle(db, ids, writes)
            return self._lease(db, limit)

        rows = transaction(db, work)
        self._idle = not rows
        if not rows:
            self._next_visible = 0.0
        return rows

    def _lease(self, db: sqlite3.Connection, limit: int) -> list[Row]:
        now = time.time()
        rows = db.execute(self._pick, (now, limit, *self.queues)).fetchall()
        if rows:
            ids = orjson.dumps([r[0] for r in rows])
            db.execute(LEASE, (self._owner, now + self.options.lease_timeout, ids))
        return rows

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        ids = orjson.dumps([d.tag for d in deliveries])
        if not writes:
            await self._conn.run(lambda db: db.execute(ACK, (self._owner, ids)).close())
            return
        await self._conn.run(lambda db: transaction(db, lambda db: self._settle(db, ids, writes)))

    def _settle(self, db: sqlite3.Connection, ids: bytes, writes: Sequence[StorageWrite]) -> None:
        """A result store's writes, then the acks (inside the caller's transaction)."""
        make_writes(db, writes)
        db.execute(ACK, (self._owner, ids)).close()

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        ids = [d.tag for d in deliveries]
        await self._conn.run(lambda db: self._release_ids(db, ids, not_before, int(uncount)))

    def _release_ids(
        self, db: sqlite3.Connection, ids: list[int], not_before: float | None, uncount: int
    ) -> None:
        visible_at = time.time() if not_before is None else not_before
        db.execute(RELEASE, (visible_at, uncount, self._owner, orjson.dumps(ids)))
        self._idle = False  # data_version does not see this connection's own writes

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        def move(db: sqlite3.Connection) -> None:
            db.execute(DEAD_LETTER, (reason, time.time(), delivery.tag, self._owner))
            db.execute(DELETE_OWNED, (delivery.tag, self._owner))

        await self._conn.run(lambda db: transaction(db, move))

    async def _heartbeat(self) -> None:
        lease = self.options.lease_timeout
        await self._conn.run(
            lambda db: db.execute(HEARTBEAT, (time.time() + lease, self._owner)).close()
        )

    async def _close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._connections.discard(self._conn)
        await self._conn.close()
