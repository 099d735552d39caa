"""The caller's own database connection, whatever library opened it, as one interface.

``app.transaction(conn)`` takes the connection the application already holds,
with its transaction open, and celeriac's statements run on it, so they commit
or roll back with the application's own writes. Accepted:

* psycopg 3 ``Connection`` and ``AsyncConnection``; psycopg2 connections;
* ``sqlite3.Connection`` (Python's legacy transaction control opens the
  transaction before the first write, as it does for the application's);
* SQLAlchemy 2's Session, Connection, AsyncSession and AsyncConnection (the
  DB-API connection under them, in the transaction the session began: on
  psycopg, psycopg2, sqlite3 or aiosqlite);
* Django's ``django.db.connection`` (or ``connections[alias]``), PostgreSQL or
  SQLite, inside ``transaction.atomic()``.

Statements are written with ``%s`` placeholders; they become ``?`` for
drivers that use them. Nothing here commits, rolls back or closes: the
connection and its transaction stay the caller's.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from ..shared_storage import StorageWrite

__all__ = ["CallerConnection", "Dialect", "caller_connection", "pin"]

Dialect = Literal["postgresql", "sqlite"]

_SUPPORTED = (
    "a psycopg or psycopg2 connection, a sqlite3.Connection, an SQLAlchemy Session, "
    "Connection, AsyncSession or AsyncConnection, or a Django connection"
)


@dataclass(slots=True)
class CallerConnection:
    """A connection of the caller's and the SQL dialect it speaks."""

    conn: Any
    dialect: Dialect
    qmark: bool
    """Placeholders are ``?`` (sqlite3, aiosqlite) rather than ``%s``."""
    kind: Literal["dbapi", "psycopg-async", "aiosqlite"]

    async def run(self, writes: Sequence[StorageWrite]) -> None:
        """Each write's statement once per row of its ``args``, in order.

        A write of one row is an ``execute``: psycopg's ``executemany`` enters
        pipeline mode and waits three times, for a statement that needs one round trip.
        """
        for write in writes:
            sql = write.statement.replace("%s", "?") if self.qmark else write.statement
            rows = list(write.args)
            if self.kind == "psycopg-async":
                async with self.conn.cursor() as cur:
                    if len(rows) == 1:
                        await cur.execute(sql, rows[0])
                    else:
                        await cur.executemany(sql, rows)
            elif self.kind == "aiosqlite":
                if len(rows) == 1:
                    await self.conn.execute(sql, rows[0])
                else:
                    await self.conn.executemany(sql, rows)
            else:
                cur = self.conn.cursor()
                try:
                    if len(rows) == 1:
                        cur.execute(sql, rows[0])
                    else:
                        cur.executemany(sql, rows)
                finally:
                    cur.close()


async def caller_connection(conn: Any) -> CallerConnection:
    """``conn`` as a :class:`CallerConnection`; ConfigurationError naming what is accepted."""
    module = type(conn).__module__
    if module.startswith("django."):
        return _django(conn)
    if module.startswith("sqlalchemy."):
        return await caller_connection(await _sqlalchemy_dbapi(conn))
    if isinstance(conn, sqlite3.Connection):
        return CallerConnection(conn, "sqlite", True, "dbapi")
    if module.startswith("psycopg.") or module == "psycopg":
        import psycopg

        if isinstance(conn, psycopg.AsyncConnection):
            return CallerConnection(conn, "postgresql", False, "psycopg-async")
        if isinstance(conn, psycopg.Connection):
            return CallerConnection(conn, "postgresql", False, "dbapi")
    if module.startswith("psycopg2"):
        return CallerConnection(conn, "postgresql", False, "dbapi")
    if module.startswith("aiosqlite"):
        return CallerConnection(conn, "sqlite", True, "aiosqlite")
    raise ConfigurationError(
        f"app.transaction() takes {_SUPPORTED}; got {type(conn).__module__}."
        f"{type(conn).__qualname__}"
    )


def pin(conn: Any) -> Any:
    """``conn`` as the calling thread sees it, for the coroutine that writes on it later.

    Django's ``django.db.connection`` is a proxy to a connection per thread, and per
    context under a running event loop (the sync facade runs one): resolved there it
    would be a new connection, outside the application's transaction.
    """
    if type(conn).__module__.startswith("django.") and hasattr(conn, "alias"):
        from django.db import connections  # type: ignore[import-not-found, import-untyped, unused-ignore]

        return connections[conn.alias]
    return conn


def _django(conn: Any) -> CallerConnection:
    vendor = getattr(conn, "vendor", None)
    if vendor not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"app.transaction() supports Django's PostgreSQL and SQLite backends, not {vendor!r}"
        )
    # Django's own methods refuse to run under an event loop (the sync facade runs one
    # in this thread), so the writes go on the driver's connection under Django's:
    # the same session, in the transaction atomic() began on it.
    raw = conn.connection
    if raw is None or conn.autocommit:
        raise ConfigurationError(
            "app.transaction() with a Django connection must be inside transaction.atomic() "
            f"on it (the {conn.alias!r} connection has no open transaction)"
        )
    return CallerConnection(raw, vendor, vendor == "sqlite", "dbapi")


async def _sqlalchemy_dbapi(conn: Any) -> Any:
    """The driver connection under an SQLAlchemy session or connection, in its transaction."""
    sa_orm = sys.modules.get("sqlalchemy.orm")
    sa_async = sys.modules.get("sqlalchemy.ext.asyncio")
    if sa_async is not None and isinstance(conn, sa_async.AsyncSession):
        conn = await conn.connection()
    # A connection outside any transaction of SQLAlchemy's would take our writes into
    # a driver transaction that its commit() does not know of: begin one, as its own
    # first execute would (autobegin), for the caller's commit() or rollback() to end.
    if sa_async is not None and isinstance(conn, sa_async.AsyncConnection):
        if not conn.in_transaction():
            await conn.begin()
        raw = await conn.get_raw_connection()
        return raw.driver_connection
    if sa_orm is not None and isinstance(conn, sa_orm.Session):
        conn = conn.connection()
    import sqlalchemy

    if isinstance(conn, sqlalchemy.Connection):
        if not conn.in_transaction():
            conn.begin()
        return conn.connection.dbapi_connection
    raise ConfigurationError(f"app.transaction() takes {_SUPPORTED}; got {type(conn)!r}")
