"""Transactional enqueue straight into the PostgreSQL broker's table.

When the broker is ``postgresql://`` and the application's connection is to the
same database, a message is one ``INSERT`` into ``celeriac_messages`` on that
connection, and the consumers' wake-up a ``pg_notify``, which PostgreSQL
delivers only at commit. A rollback leaves no row; a commit leaves a row that
the next fetch takes, whether or not the notification reached anybody (a
consumer also looks every ``SAFETY_LOOK`` seconds), so a producer that dies
right after its COMMIT loses nothing. The PENDING marker goes into the same
transaction when the result store shares the database; with another store it
is not written (an unknown id reads PENDING there anyway).

A ``delay()`` in the block is one statement on the application's connection, one
round trip (:func:`~celeriac.postgres.broker.fused`): the marker, the row and the
notification. A block looks at the application's connection once, and each
statement is put in the broker's schema once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..brokers.message_columns import message_rows
from ..errors import ConfigurationError
from ..postgres.broker import INSERT, PostgresBroker, fused
from ..postgres.schema import NOTIFY, qualified
from ..postgres.url import split_schema
from ..protocol import Outgoing
from ..sending import App, pending_markers
from ..shared_storage import StorageWrite
from .callers import CallerConnection, caller_connection

__all__ = ["DirectEnlistment"]


class DirectEnlistment:
    """Sends of an ``app.transaction(conn)`` block as rows of the PostgreSQL broker."""

    def __init__(self, app: App, conn: Any):
        self.app = app
        self._conn = conn
        self._caller: CallerConnection | None = None

    async def enqueue(self, batch: Sequence[Outgoing]) -> None:
        caller = self._caller or await self._connection()
        conns = self.app.connections()
        broker = await conns.abroker()  # its first connect creates the tables
        assert isinstance(broker, PostgresBroker)
        writes: list[StorageWrite] = []
        conf = self.app.conf
        pending = pending_markers(conf, batch) if conf.result_store_pending else []
        if pending and conns.shared:
            writes += (await conns.abackend()).pending_writes(pending)
        writes.append(StorageWrite(INSERT, message_rows(batch, None)))
        channels = sorted(broker.channels(list({o.queue for o in batch})))
        writes.append(StorageWrite(NOTIFY, [(channels,)]))
        one = fused(writes)
        await caller.run(
            [
                StorageWrite(_in_schema(w.statement, broker.url), w.args)
                for w in ([one] if one is not None else writes)
            ]
        )

    async def _connection(self) -> CallerConnection:
        caller = await caller_connection(self._conn)
        if caller.dialect != "postgresql":
            raise ConfigurationError(
                "app.transaction() with the PostgreSQL broker needs a connection to its "
                f"PostgreSQL database, not {caller.dialect}; to enqueue on another database, "
                "set outbox_url to it and run celeriac outbox-relay"
            )
        self._caller = caller
        return caller


@functools.lru_cache(maxsize=256)
def _in_schema(statement: str, url: str) -> str:
    """``statement`` with celeriac's tables in the broker URL's schema (the application's
    connection has a ``search_path`` of its own), made once per statement and URL."""
    return qualified(statement, split_schema(url)[1])
