"""The PostgreSQL broker: one row per message, leased with ``FOR UPDATE SKIP LOCKED``.

Tables, columns and indexes: :mod:`celeriac.postgres.schema` (version 1),
created on first connect. A publish is one transaction, one round trip: the
result store's carried writes, the rows, and a ``pg_notify`` per queue
(:mod:`celeriac.postgres.notify`), delivered at commit. One message (``delay()``)
is one statement (:func:`fused`), its own transaction; a batch is a pipeline with
the rows in one ``INSERT`` (:data:`INSERT_MANY`). Consumers
(:mod:`celeriac.postgres.consumer`) lease rows under heartbeat leases. The
operations plane and beat's store share the broker's pool (``pool()``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..brokers.base import Broker, BrokerOptions, DeadLetter, QueueStats
from ..brokers.beat_store import BeatStore
from ..brokers.message_columns import dead_letter_of, message_rows
from ..brokers.operations import Operations
from ..errors import BrokerError
from ..protocol import Outgoing
from ..shared_storage import StorageWrite
from .connection import errors, make_writes, one_round_trip, open_pool
from .notify import Listener, channel_for
from .schema import DEAD_LETTERS_TABLE as _D
from .schema import MESSAGE_COLUMNS, NOTIFY, ensure_schema
from .schema import MESSAGES_TABLE as _M
from .url import storage_name

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from .consumer import PostgresConsumer

__all__ = ["INSERT", "INSERT_MANY", "PostgresBroker", "fused", "message_columns"]

INSERT = (
    f"INSERT INTO {_M} (queue, priority, visible_at, {MESSAGE_COLUMNS})"
    " VALUES (%s, %s, coalesce(to_timestamp(%s::float8), now()), %s, %s, %s, %s, %s)"
)
INSERT_MANY = (
    f"INSERT INTO {_M} (queue, priority, visible_at, {MESSAGE_COLUMNS})"
    " SELECT q, p, coalesce(to_timestamp(t), now()), h, r, c, e, b FROM unnest(%b::text[],"
    " %b::int2[], %b::float8[], %b::bytea[], %b::bytea[], %b::text[], %b::text[], %b::bytea[])"
    " WITH ORDINALITY AS m(q, p, t, h, r, c, e, b, n) ORDER BY n"
)
"""The rows of a batch as one ``INSERT`` of arrays (:func:`message_columns`), in the
batch's order (the ids keep it); in binary (``%b``, psycopg 3 only): as text, the
server would parse every body from hex."""
PURGE = f"DELETE FROM {_M} WHERE queue = %s AND (owner IS NULL OR visible_at <= now())"
STATS = (
    "SELECT count(*) FILTER (WHERE visible_at <= now()),"
    " count(*) FILTER (WHERE visible_at > now() AND owner IS NULL),"
    f" count(*) FILTER (WHERE visible_at > now() AND owner IS NOT NULL) FROM {_M} WHERE queue = %s"
)
_DEAD_COLUMNS = (
    "id, queue, reason, delivery_count, extract(epoch FROM dead_at)::float8, " + MESSAGE_COLUMNS
)
LIST_DEAD = (
    f"SELECT {_DEAD_COLUMNS} FROM {_D} WHERE %(queue)s::text IS NULL OR queue = %(queue)s"
    " ORDER BY id LIMIT %(limit)s"
)
REQUEUE_DEAD = (
    f"WITH moved AS (DELETE FROM {_D} WHERE headers IS NOT NULL AND id = ANY(%s)"
    f" RETURNING id, queue, priority, {MESSAGE_COLUMNS})"
    f" INSERT INTO {_M} (queue, priority, visible_at, {MESSAGE_COLUMNS})"
    f" SELECT queue, priority, now(), {MESSAGE_COLUMNS} FROM moved ORDER BY id RETURNING queue"
)
PURGE_DEAD = f"DELETE FROM {_D} WHERE %(queue)s::text IS NULL OR queue = %(queue)s"
DEAD_LETTER_RAW = (
    f"INSERT INTO {_D} (queue, priority, reason, delivery_count, body) VALUES (%s, 0, %s, 0, %s)"
)


def message_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``message_rows`` as :data:`INSERT_MANY`'s eight arrays; delays as floats, since a
    binary array takes one element type."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    columns[2] = [None if t is None else float(t) for t in columns[2]]
    return columns


_TOP_LEVEL = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_LAST = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def fused(writes: Sequence[StorageWrite]) -> StorageWrite | None:
    """``writes`` as ONE statement with one row of parameters, or None if they cannot be.

    One statement is its own transaction on an autocommit connection and a single
    round trip inside the caller's, without ``BEGIN``, ``COMMIT`` or pipeline mode
    around it: a ``delay()`` is a message row, its PENDING marker and a ``pg_notify``.
    Each write but the last becomes a data-modifying ``WITH`` clause, which PostgreSQL
    runs to completion whether or not anything reads it. They all see one snapshot,
    so only writes of one row each are fused, no statement twice (two writes never
    touch one row), none with a ``WITH`` of its own (one that modifies data must be at
    the top level).
    """
    if not writes or any(len(w.args) != 1 for w in writes):
        return None
    statement = _fused_statement(tuple(w.statement for w in writes))
    if statement is None:
        return None
    return StorageWrite(statement, [tuple(value for w in writes for value in w.args[0])])


@functools.lru_cache(maxsize=128)
def _fused_statement(statements: tuple[str, ...]) -> str | None:
    *firsts, last = statements
    if len(set(firsts)) != len(firsts) or not _LAST.match(last):
        return None
    if not all(_TOP_LEVEL.match(s) for s in firsts):
        return None
    if not firsts:
        return last
    return "WITH " + ", ".join(f"w{i} AS ({s})" for i, s in enumerate(firsts)) + " " + last


class PostgresBroker(Broker):
    """``postgresql://user@host:port/dbname?schema=name``: see the module docstring."""

    scheme = "postgresql"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self.storage = storage_name(url)  # a malformed URL fails here
        self._pool: AsyncConnectionPool | None = None
        self._listener: Listener | None = None
        self._channel_names: dict[str, str] = {}

    def pool(self) -> AsyncConnectionPool:
        """The open pool (the operations plane and beat's store share it)."""
        if self._pool is None:
            raise BrokerError(f"{self!r} is not connected: call connect() first")
        return self._pool

    def listener(self) -> Listener:
        """The broker object's LISTEN connection, made on first use (its consumers share it)."""
        if self._listener is None:
            self._listener = Listener(self.url, self.options.connect_timeout)
        return self._listener

    def channels(self, queues: Sequence[str]) -> list[str]:
        names = self._channel_names  # a hash and a URL parse per name: made once per queue
        return [names.get(q) or names.setdefault(q, channel_for(self.url, q)) for q in queues]

    def consumer(self, queues: Sequence[str], name: str) -> PostgresConsumer:
        from .consumer import PostgresConsumer

        return PostgresConsumer(self, queues, name)

    async def connect(self) -> None:
        if self._pool is not None:
            return
        pool = await open_pool(self.url, timeout=self.options.connect_timeout)
        try:
            async with errors(self.url):
                await ensure_schema(self.url, pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    def _make_operations(self) -> Operations:
        from .operations import PostgresOperations

        return PostgresOperations(self.url, self.pool)

    def _make_beat_store(self) -> BeatStore:
        from .beat import PostgresBeatStore

        return PostgresBeatStore(self.url, self.pool)

    async def close(self) -> None:
        operations, self._operations = self._operations, None  # made again on next use
        if operations is not None:
            await operations.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None  # connect() may open it again
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; driver errors become celeriac's."""
        async with errors(self.url), self.pool().connection() as conn:
            yield conn

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        await self._publish_with(batch, ())

    async def _publish_with(
        self, batch: Sequence[Outgoing], writes: Sequence[StorageWrite]
    ) -> None:
        rows = message_rows(batch, None)
        channels = sorted(self.channels(list({o.queue for o in batch})))
        notify = StorageWrite(NOTIFY, [(channels,)])
        single = fused([*writes, StorageWrite(INSERT, rows), notify])
        async with self.session() as conn:
            if single is not None:  # autocommit: one statement is one transaction
                await conn.execute(single.statement, single.args[0])
                return
            async with one_round_trip(conn) as cur:
                await make_writes(cur, writes)
                if len(rows) == 1:
                    await cur.execute(INSERT, rows[0])
                else:
                    await cur.execute(INSERT_MANY, message_columns(rows))
                await cur.execute(NOTIFY, (channels,))

    async def purge(self, queue: str) -> int:
        async with self.session() as conn:
            return (await conn.execute(PURGE, (queue,))).rowcount

    async def stats(self, queue: str) -> QueueStats:
        async with self.session() as conn:
            row = await (await conn.execute(STATS, (queue,))).fetchone()
        assert row is not None  # an aggregate always returns a row
        return QueueStats(*row)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        async with self.session() as conn:
            cur = await conn.execute(LIST_DEAD, {"queue": queue, "limit": limit})
            rows = await cur.fetchall()
        return [dead_letter_of(row) for row in rows]

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        wanted = [int(i) for i in ids if i.isdigit()]
        async with self.session() as conn, conn.transaction():
            queues = [q for (q,) in await (await conn.execute(REQUEUE_DEAD, (wanted,))).fetchall()]
            if queues:
                await conn.execute(NOTIFY, (sorted(set(self.channels(queues))),))
        return len(queues)

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        async with self.session() as conn:
            return (await conn.execute(PURGE_DEAD, {"queue": queue})).rowcount

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        async with self.session() as conn:
            await conn.execute(DEAD_LETTER_RAW, (queue, reason, raw))
