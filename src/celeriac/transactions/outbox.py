"""The transactional outbox: messages written in the application's transaction, published later.

For a broker that cannot join the application's transaction (Redis, RabbitMQ,
SQLite in a file of its own), ``app.transaction(conn)`` writes each message as
a row of ``celeriac_outbox`` in the application's own database (``outbox_url``,
PostgreSQL or SQLite), on the application's connection. A rollback leaves no
row; a commit leaves one, which ``celeriac outbox-relay``
(:mod:`celeriac.transactions.relay`) publishes to the broker and deletes only
once the broker has confirmed it. The message, its task id included, is built
at enqueue: a relay that dies between the publish and the delete publishes
the same message again, and the worker runs that duplicate only if no result
is stored for its id yet.

Table ``celeriac_outbox``, one row per message from the commit that enqueued
it until the relay's delete:

* ``id``: ascending (PostgreSQL bigserial; SQLite INTEGER PRIMARY KEY
  AUTOINCREMENT): the relay publishes in this order.
* ``queue``, ``priority``, ``not_before`` (UNIX time or NULL), and the five
  message columns of :mod:`celeriac.brokers.message_columns`.
* ``created_at``: UNIX time of the insert (how far behind the relay is).

On PostgreSQL each enqueue also notifies :func:`channel` at commit, so the
relay wakes at once; SQLite has no notification, and the relay looks every
``outbox_poll_interval``.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..brokers.message_columns import Row, decode_message, message_rows
from ..errors import ConfigurationError
from ..protocol import Outgoing
from ..sending import App
from ..shared_storage import StorageWrite
from .callers import CallerConnection, Dialect, caller_connection

__all__ = [
    "COLUMNS",
    "OutboxEnlistment",
    "channel",
    "ddl",
    "dialect_of",
    "ensure_outbox",
    "outgoing_of",
]

TABLE = "celeriac_outbox"
COLUMNS = "queue, priority, not_before, headers, properties, content_type, content_encoding, body"
"""The columns of :func:`outgoing_of`'s row, in order (after ``id``)."""

_DDL: dict[Dialect, str] = {
    "postgresql": """CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    not_before double precision,
    headers bytea NOT NULL,
    properties bytea NOT NULL,
    content_type text NOT NULL,
    content_encoding text NOT NULL,
    body bytea NOT NULL,
    created_at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
)""",
    "sqlite": f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    not_before REAL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
)""",
}
_INSERT = f"INSERT INTO {{table}} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
_NOTIFY = "SELECT pg_notify(%s, '')"


def dialect_of(url: str) -> Dialect:
    """The dialect of an ``outbox_url``; ConfigurationError naming the URL otherwise."""
    scheme = url.partition("://")[0]
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        return "sqlite"
    raise ConfigurationError(
        f"outbox_url must name a PostgreSQL or SQLite database, not {url.partition('://')[0]}://"
        " (postgresql://user@host/dbname or sqlite:///path.db)"
    )


def table(url: str) -> str:
    """The outbox table as statements on the application's connection name it."""
    if dialect_of(url) == "sqlite":
        return TABLE
    from ..postgres.url import split_schema

    return f'"{split_schema(url)[1]}".{TABLE}'


def ddl(url: str) -> str:
    """The ``CREATE TABLE`` of the outbox in ``url``'s database (``celeriac db sql``)."""
    return _DDL[dialect_of(url)].format(table=table(url)) + ";\n"


def channel(url: str) -> str:
    """The PostgreSQL notification channel of the outbox in ``url``'s schema."""
    from ..postgres.url import split_schema

    digest = hashlib.blake2b(split_schema(url)[1].encode(), digest_size=6).hexdigest()
    return f"celeriac_outbox_{digest}"


_ensured: set[str] = set()


async def ensure_outbox(url: str) -> None:
    """Create the outbox table if missing, on a connection of celeriac's own (once per
    process and URL): the relay's start, and a PostgreSQL enqueue's first, so the
    application's transaction runs no DDL there."""
    if url in _ensured:
        return
    if dialect_of(url) == "postgresql":
        from ..postgres.connection import connect, errors
        from ..postgres.url import split_schema

        async with errors(url):
            conn = await connect(url)
            try:  # the schema too, as the broker and the store create theirs
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{split_schema(url)[1]}"')
                await conn.execute(_DDL["postgresql"].format(table=TABLE))
            finally:
                await conn.close()
    else:
        from ..sqlite.url import parse_sqlite_url

        path, _ = parse_sqlite_url(url)
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute(_DDL["sqlite"])
        finally:
            db.close()
    _ensured.add(url)


def outgoing_of(row: Row) -> Outgoing:
    """The message of an outbox row (its :data:`COLUMNS`, in order)."""
    queue, priority, not_before = row[:3]
    return Outgoing(queue, decode_message(row[3:]), priority, not_before)


class OutboxEnlistment:
    """Sends of an ``app.transaction(conn)`` block as rows of the outbox (``outbox_url``)."""

    def __init__(self, app: App, conn: Any, url: str):
        self.app = app
        self.url = url
        self._conn = conn
        self._dialect = dialect_of(url)
        self._insert = _INSERT.format(table=table(url))
        self._notify = (
            StorageWrite(_NOTIFY, [(channel(url),)]) if self._dialect == "postgresql" else None
        )
        self._caller: CallerConnection | None = None
        self._ensured = False

    async def enqueue(self, batch: Sequence[Outgoing]) -> None:
        caller = self._caller or await self._connection()
        writes: list[StorageWrite] = []
        if self._dialect == "postgresql":
            await ensure_outbox(self.url)
        elif not self._ensured:
            # SQLite: the application's transaction may hold the file's write lock
            # already, which another connection's CREATE would wait on forever; in the
            # transaction it is a look at the schema (or a create that commits with it).
            writes.append(StorageWrite(_DDL["sqlite"], [()]))
            self._ensured = True
        writes.append(StorageWrite(self._insert, message_rows(batch, None)))
        if self._notify is not None:
            writes.append(self._notify)
        await caller.run(writes)

    async def _connection(self) -> CallerConnection:
        """The application's connection, checked once per block: the outbox's database."""
        caller = await caller_connection(self._conn)
        if caller.dialect != self._dialect:
            raise ConfigurationError(
                f"outbox_url names a {self._dialect} database but app.transaction() was given "
                f"a {caller.dialect} connection: the outbox must live in the database the "
                "application's transaction writes to"
            )
        self._caller = caller
        return caller
