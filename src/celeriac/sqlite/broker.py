"""The embedded broker: one SQLite file shared by every process on one machine.

One row per message (:mod:`celeriac.sqlite.schema` lists every table, index
and column, with its lifetime); publishes commit with ``synchronous=FULL``
through the process's shared publishing connection, in groups
(:mod:`celeriac.sqlite.connection`); each consumer leases rows on a
connection of its own (:mod:`celeriac.sqlite.consumer`). No connection uses
SQLite's busy handler (:mod:`celeriac.sqlite.busy`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import orjson

from ..brokers.base import Broker, BrokerOptions, DeadLetter, QueueStats
from ..brokers.beat_store import BeatStore
from ..brokers.message_columns import dead_letter_of, message_rows
from ..brokers.operations import Operations
from ..protocol import Outgoing
from ..shared_storage import StorageWrite
from .beat import SQLiteBeatStore
from .connection import Connection, Insert, transaction, writers
from .consumer import Doorbell, SQLiteConsumer
from .operations import SQLiteOperations
from .schema import (
    DEAD_LETTER_RAW,
    DELETE_REQUEUED,
    LIST_DEAD,
    LIST_DEAD_OF_QUEUE,
    PURGE,
    PURGE_DEAD,
    PURGE_DEAD_OF_QUEUE,
    REQUEUE_DEAD,
    STATS,
)
from .url import parse_sqlite_url

__all__ = ["SQLiteBroker"]


class SQLiteBroker(Broker):
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``: see the module docstring."""

    scheme = "sqlite"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self._path = str(parse_sqlite_url(url)[0])  # a malformed URL fails here
        self.storage = f"sqlite:{self._path}"
        self._shared_writer: Connection | None = None
        self._connections: set[Connection] = set()
        self._doorbell = Doorbell()

    def consumer(self, queues: Sequence[str], name: str) -> SQLiteConsumer:
        return SQLiteConsumer(
            self, queues, name, doorbell=self._doorbell, connections=self._connections
        )

    async def connect(self) -> None:
        await self._writer.run(lambda db: None)

    @property
    def _writer(self) -> Connection:
        """The process's publishing connection to this file, shared with its other brokers."""
        if self._shared_writer is None:
            self._shared_writer = writers.acquire(self._path, self.url)
        return self._shared_writer

    def _make_operations(self) -> Operations:
        return SQLiteOperations(self.url, lambda: self._writer, self.options.poll_interval)

    def _make_beat_store(self) -> BeatStore:
        return SQLiteBeatStore(lambda: self._writer)

    async def close(self) -> None:
        operations, self._operations = self._operations, None  # made again on next use
        if operations is not None:
            await operations.close()
        connections = list(self._connections)
        self._connections.clear()  # the same set: consumers made later add to it
        for conn in connections:
            await conn.close()
        writer, self._shared_writer = self._shared_writer, None  # connect() may open it again
        if writer is not None and writers.release(self._path, writer):
            await writer.close()

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        await self._publish_with(batch, ())

    async def _publish_with(
        self, batch: Sequence[Outgoing], writes: Sequence[StorageWrite]
    ) -> None:
        rows = message_rows(batch, time.time())
        await self._writer.run(Insert(rows, writes))
        self._doorbell.ring()

    async def purge(self, queue: str) -> int:
        return await self._writer.run(lambda db: db.execute(PURGE, (queue, time.time())).rowcount)

    async def stats(self, queue: str) -> QueueStats:
        row = await self._writer.run(lambda db: db.execute(STATS, (time.time(), queue)).fetchone())
        return QueueStats(*row)

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        sql, params = (
            (LIST_DEAD, (limit,)) if queue is None else (LIST_DEAD_OF_QUEUE, (limit, queue))
        )
        rows = await self._writer.run(lambda db: db.execute(sql, params).fetchall())
        return [dead_letter_of(row) for row in rows]

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        now, wanted = time.time(), orjson.dumps([int(i) for i in ids if i.isdigit()])

        def move(db: sqlite3.Connection) -> int:
            count = db.execute(REQUEUE_DEAD, (now, wanted)).rowcount
            db.execute(DELETE_REQUEUED, (wanted,))
            return count

        return await self._writer.run(lambda db: transaction(db, move))

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        sql, params = (PURGE_DEAD, ()) if queue is None else (PURGE_DEAD_OF_QUEUE, (queue,))
        return await self._writer.run(lambda db: db.execute(sql, params).rowcount)

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        params = (queue, reason, time.time(), raw)
        await self._writer.run(lambda db: db.execute(DEAD_LETTER_RAW, params).close())
