"""The outbox table as the relay reads it, one class per database (:mod:`.relay`).

Each hands committed rows, in id order, to the relay's publish and deletes them
once it returned. PostgreSQL: the holder of the outbox's advisory lock reads it,
woken by the commits' notifications. SQLite: each batch is one ``BEGIN
IMMEDIATE`` transaction around select, publish and delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..brokers.message_columns import Row
from .outbox import COLUMNS, channel, ensure_outbox, table

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["Outbox", "PostgresOutbox", "Publisher", "SqliteOutbox", "lock_key"]

SQLITE_BUSY_TIMEOUT = 5.0
"""Seconds a SQLite relay waits for the application's write lock before it backs off."""

Publisher = Callable[[Sequence[Row]], Awaitable[None]]
"""The relay's publish of a batch of rows (``id`` first, then the outbox's columns)."""


class Outbox(Protocol):
    """One outbox table, as the relay reads it (one implementation per dialect)."""

    async def lead(self) -> bool:
        """Whether this relay may publish now (takes the lock if free)."""

    async def take(self, limit: int, publish: Publisher) -> int:
        """Hand up to ``limit`` committed rows, in id order, to ``publish``; delete them
        once it returned. How many rows were taken (0: the outbox is empty)."""

    async def wait(self, timeout: float) -> None:
        """Return at the next commit to the outbox, or after ``timeout`` seconds."""

    async def close(self) -> None:
        """Drop the connection (and with it the lock); the next call opens a new one."""


def lock_key(url: str) -> int:
    """The advisory lock (a signed 64-bit key) of the outbox in ``url``'s schema."""
    digest = hashlib.blake2b(channel(url).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresOutbox:
    """The outbox in PostgreSQL, read by the holder of its advisory lock."""

    def __init__(self, url: str):
        self.url = url
        self._select = f"SELECT id, {COLUMNS} FROM {table(url)} ORDER BY id LIMIT %s"
        self._delete = f"DELETE FROM {table(url)} WHERE id = ANY(%s)"
        self._key = lock_key(url)
        self._conn: AsyncConnection[Any] | None = None
        self._leading = False

    async def _connection(self) -> AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            from ..postgres.connection import connect

            await ensure_outbox(self.url)
            self._conn, self._leading = await connect(self.url), False
        return self._conn

    async def lead(self) -> bool:
        if self._leading:
            return True
        from psycopg import sql

        from ..postgres.connection import errors

        async with errors(self.url):
            conn = await self._connection()
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
            row = await cur.fetchone()
            if not (row and row[0]):
                return False
            # LISTEN only while leading: a standby would pile notifications up unread.
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.url))))
        self._leading = True
        return True

    async def take(self, limit: int, publish: Publisher) -> int:
        from ..postgres.connection import errors

        async with errors(self.url):
            conn = await self._connection()
            rows = await (await conn.execute(self._select, (limit,))).fetchall()
        if not rows:
            return 0
        await publish(rows)
        async with errors(self.url):
            await conn.execute(self._delete, ([row[0] for row in rows],))
        return len(rows)

    async def wait(self, timeout: float) -> None:
        from ..postgres.connection import errors

        conn = self._conn
        if conn is None:
            await asyncio.sleep(timeout)
            return
        async with errors(self.url):
            async with contextlib.aclosing(conn.notifies(timeout=timeout, stop_after=1)) as first:
                async for _ in first:
                    break
            # Commits made meanwhile notified too: one look serves them all.
            async with contextlib.aclosing(conn.notifies(timeout=0)) as more:
                async for _ in more:
                    pass

    async def close(self) -> None:
        conn, self._conn, self._leading = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class SqliteOutbox:
    """The outbox in a SQLite file: one batch per ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, url: str):
        from ..sqlite.url import parse_sqlite_url

        self.url = url
        self._path, _ = parse_sqlite_url(url)
        self._any = f"SELECT EXISTS (SELECT 1 FROM {table(url)})"
        self._select = f"SELECT id, {COLUMNS} FROM {table(url)} ORDER BY id LIMIT ?"
        self._delete = f"DELETE FROM {table(url)} WHERE id = ?"
        self._db: sqlite3.Connection | None = None

    async def lead(self) -> bool:
        return True

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(
                self._path,
                isolation_level=None,
                timeout=SQLITE_BUSY_TIMEOUT,
                check_same_thread=False,  # used by one thread at a time, in turn
            )
        return self._db

    def _begin(self, limit: int) -> list[Row]:
        """The first ``limit`` rows, inside ``BEGIN IMMEDIATE`` when there are any."""
        db = self._connection()
        if not db.execute(self._any).fetchone()[0]:  # no write lock to see an empty outbox
            return []
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(self._select, (limit,)).fetchall()
        except BaseException:
            self._rollback()
            raise
        if not rows:
            self._rollback()
        return rows

    def _delete_and_commit(self, ids: list[int]) -> None:
        db = self._connection()
        try:
            db.executemany(self._delete, [(i,) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        db = self._db
        if db is not None and db.in_transaction:
            db.execute("ROLLBACK")

    async def take(self, limit: int, publish: Publisher) -> int:
        await ensure_outbox(self.url)
        rows = await asyncio.to_thread(self._begin, limit)
        if not rows:
            return 0
        try:
            await publish(rows)
        except BaseException:
            await asyncio.to_thread(self._rollback)
            raise
        await asyncio.to_thread(self._delete_and_commit, [row[0] for row in rows])
        return len(rows)

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
