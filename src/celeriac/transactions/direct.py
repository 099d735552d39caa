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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..brokers.message_columns import message_rows
from ..errors import ConfigurationError
from ..postgres.broker import INSERT, PostgresBroker
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
        caller = self._caller = self._caller or await caller_connection(self._conn)
        if caller.dialect != "postgresql":
            raise ConfigurationError(
                "app.transaction() with the PostgreSQL broker needs a connection to its "
                f"PostgreSQL database, not {caller.dialect}; to enqueue on another database, "
                "set outbox_url to it and run celeriac outbox-relay"
            )
        conns = self.app.connections()
        broker = await conns.abroker()  # its first connect creates the tables
        assert isinstance(broker, PostgresBroker)
        writes: list[StorageWrite] = []
        pending = (
            pending_markers(self.app.conf, batch) if self.app.conf.result_store_pending else []
        )
        if pending and conns.shared:
            writes += (await conns.abackend()).pending_writes(pending)
        writes.append(StorageWrite(INSERT, message_rows(batch, None)))
        writes.append(
            StorageWrite(NOTIFY, [(sorted(set(broker.channels([o.queue for o in batch]))),)])
        )
        _, schema = split_schema(broker.url)
        await caller.run([StorageWrite(qualified(w.statement, schema), w.args) for w in writes])
