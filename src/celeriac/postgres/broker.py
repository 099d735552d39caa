"""The PostgreSQL broker: one row per message, leased with ``FOR UPDATE SKIP LOCKED``.

Tables, columns and indexes: :mod:`celeriac.postgres.schema` (version 1),
created on first connect. A publish is one transaction, one round trip
(pipeline mode): the result store's carried writes, the rows, and a
``pg_notify`` per queue (:mod:`celeriac.postgres.notify`), delivered at
commit. Consumers (:mod:`celeriac.postgres.consumer`) lease rows under heartbeat
leases. The operations plane and beat's store share the broker's pool
(``pool()``).
"""

from __future__ import annotations

import contextlib
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

__all__ = ["PostgresBroker"]

INSERT = (
    f"INSERT INTO {_M} (queue, priority, visible_at, {MESSAGE_COLUMNS})"
    " VALUES (%s, %s, coalesce(to_timestamp(%s::float8), now()), %s, %s, %s, %s, %s)"
)
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


class PostgresBroker(Broker):
    """``postgresql://user@host:port/dbname?schema=name``: see the module docstring."""

    scheme = "postgresql"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self.storage = storage_name(url)  # a malformed URL fails here
        self._pool: AsyncConnectionPool | None = None
        self._listener: Listener | None = None

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
        return [channel_for(self.url, q) for q in queues]

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
        channels = sorted(set(self.channels([o.queue for o in batch])))
        async with self.session() as conn, one_round_trip(conn) as cur:
            await make_writes(cur, writes)
            await cur.executemany(INSERT, rows)
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
