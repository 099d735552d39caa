"""Every table celeriac keeps in PostgreSQL, as numbered migrations, and their runner.

All DDL lives here (``celeriac db sql`` prints it for a DBA; ``celeriac db
migrate`` applies it ahead of time). The broker and the result store call
``ensure_schema`` on first connect, once per process per database and schema,
so a store used alone works too. Versions are forward-only: a released entry
is never edited; a change is a new entry at the end of ``MIGRATIONS``.

Tables of this module's own (names without a schema: ``search_path`` is the
URL's schema, see :mod:`celeriac.postgres.connection`):

``celeriac_schema``, one row per applied migration, as long as the schema:
``version`` int PRIMARY KEY, ``applied_at`` timestamptz.

Version 1, the broker's (:mod:`celeriac.postgres.broker`):

``celeriac_messages``, one row per message not yet acked, from publish to ack
(or to purge, or to the move into the dead-letter table):

* ``id`` bigserial PRIMARY KEY: publish order, never reused, so a late ack can
  never hit a newer message; the delivery tag.
* ``queue`` text; ``priority`` smallint 0-9, 9 delivered first.
* ``visible_at`` timestamptz: when the row may next be fetched. The
  ``not_before`` of a delayed message; the lease expiry of a fetched one (one
  column, so "ready" is one index range per queue and priority). Compared with
  the server's clock only, so workers' clocks may disagree.
* ``owner`` text NULL: the consumer token holding the lease, NULL when nobody
  does. A row with an owner and ``visible_at <= now()`` is a lapsed lease: its
  consumer died, and the next fetch takes it over.
* ``delivery_count`` int: fetches without an ack (the dead-letter rule).
* ``headers``, ``properties`` bytea: the message's JSON objects (orjson bytes,
  kept as sent: jsonb would reorder keys and drop duplicates); ``body`` bytea;
  ``content_type``, ``content_encoding`` text.

Indexes: ``celeriac_messages_fetch (queue, priority DESC, visible_at, id)``
serves the fetch in its own order; ``celeriac_messages_owner (owner) WHERE
owner IS NOT NULL`` serves heartbeats, acks and hand-backs.

``celeriac_dead_letters``, one row per dead letter, from the dead-lettering
until requeued or purged: ``id`` bigserial, ``queue``, ``priority``,
``reason``, ``delivery_count``, ``dead_at`` timestamptz, and the message
columns as above; for bytes that were never a message, ``headers`` (and the
other message columns) are NULL and ``body`` holds the raw bytes. Index
``celeriac_dead_letters_queue (queue, id)``.

Later versions (the result store's, the operations plane's and beat's) list
their tables in their own modules' docstrings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .url import storage_name

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["MIGRATIONS", "Migration", "all_sql", "ensure_schema", "migrate", "qualified"]

SCHEMA_TABLE = "celeriac_schema"
MESSAGES_TABLE = "celeriac_messages"
DEAD_LETTERS_TABLE = "celeriac_dead_letters"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    """DDL statements separated by semicolons, without parameters."""


_M, _D = MESSAGES_TABLE, DEAD_LETTERS_TABLE

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "broker: messages and dead letters",
        f"""
CREATE TABLE {_M} (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL CHECK (priority BETWEEN 0 AND 9),
    visible_at timestamptz NOT NULL,
    owner text,
    delivery_count integer NOT NULL DEFAULT 0,
    headers bytea NOT NULL,
    properties bytea NOT NULL,
    content_type text NOT NULL,
    content_encoding text NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX {_M}_fetch ON {_M} (queue, priority DESC, visible_at, id);
CREATE INDEX {_M}_owner ON {_M} (owner) WHERE owner IS NOT NULL;
CREATE TABLE {_D} (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL,
    reason text NOT NULL,
    delivery_count integer NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT now(),
    headers bytea,
    properties bytea,
    content_type text,
    content_encoding text,
    body bytea NOT NULL
);
CREATE INDEX {_D}_queue ON {_D} (queue, id);
""",
    ),
    Migration(
        2,
        "result store: results, group members, chords (celeriac.postgres.store)",
        """
CREATE TABLE celeriac_results (
    key text PRIMARY KEY,
    value bytea NOT NULL,
    expires_at timestamptz,
    fence bigint
);
CREATE INDEX celeriac_results_expires_at ON celeriac_results (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE celeriac_result_sets (
    key text PRIMARY KEY,
    done integer NOT NULL,
    started_at timestamptz NOT NULL,
    expires_at timestamptz
);
CREATE INDEX celeriac_result_sets_expires_at ON celeriac_result_sets (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE celeriac_result_members (
    key text NOT NULL REFERENCES celeriac_result_sets ON DELETE CASCADE,
    member text NOT NULL,
    added_at timestamptz NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE celeriac_chords (
    group_id text PRIMARY KEY,
    size integer NOT NULL,
    done integer NOT NULL,
    token text,
    lease_until timestamptz,
    expires_at timestamptz
);
CREATE INDEX celeriac_chords_expires_at ON celeriac_chords (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE celeriac_chord_parts (
    group_id text NOT NULL REFERENCES celeriac_chords ON DELETE CASCADE,
    task_id text NOT NULL,
    position integer,
    value bytea NOT NULL,
    PRIMARY KEY (group_id, task_id)
);
""",
    ),
    Migration(
        3,
        "operations plane and beat (celeriac.postgres.operations, celeriac.postgres.beat)",
        """
CREATE UNLOGGED TABLE celeriac_operations (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    headers bytea NOT NULL,
    body bytea NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX celeriac_operations_channel ON celeriac_operations (channel, id);
CREATE INDEX celeriac_operations_age ON celeriac_operations (sent_at);
CREATE TABLE celeriac_revoked (task_id text PRIMARY KEY, until double precision NOT NULL);
CREATE TABLE celeriac_beat_lease (
    lease text PRIMARY KEY,
    holder text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    idle_since timestamptz
);
CREATE TABLE celeriac_beat_runs (entry text PRIMARY KEY, tick double precision NOT NULL);
""",
    ),
]

_CREATE_SCHEMA_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE}"
    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
)
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('celeriac_schema:' || current_schema()))"
"""Serializes migrations of one schema (concurrent first uses, ``db migrate``);
released when the transaction ends."""
_APPLIED = f"SELECT version FROM {SCHEMA_TABLE}"
_IS_APPLIED = f"SELECT 1 FROM {SCHEMA_TABLE} WHERE version = %s"
_RECORD = f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (%s)"

_migrated: set[str] = set()
"""``storage_name``s this process has brought up to date (``ensure_schema``)."""


async def migrate(conn: AsyncConnection[Any]) -> list[Migration]:
    """Apply the missing migrations in order, each in one transaction under the
    schema's advisory lock; return those this call applied."""
    applied: list[Migration] = []
    done = await _applied(conn)
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute(_LOCK)
            if await (await conn.execute(_IS_APPLIED, (migration.version,))).fetchone():
                continue  # another process applied it while this one waited
            await conn.execute(migration.sql.encode())
            await conn.execute(_RECORD, (migration.version,))
        applied.append(migration)
    return applied


async def _applied(conn: AsyncConnection[Any]) -> set[int]:
    """Versions applied so far (creating ``celeriac_schema`` on first use)."""
    async with conn.transaction():
        await conn.execute(_LOCK)
        await conn.execute(_CREATE_SCHEMA_TABLE)
        rows = await (await conn.execute(_APPLIED)).fetchall()
    return {version for (version,) in rows}


async def ensure_schema(url: str, pool: AsyncConnectionPool) -> None:
    """``migrate`` once per process per database and schema (the broker's and the
    store's first connect); later calls cost nothing."""
    name = storage_name(url)
    if name in _migrated:
        return
    async with pool.connection() as conn:
        await migrate(conn)
    _migrated.add(name)


def all_sql() -> str:
    """Every migration's DDL, in order, as a DBA would run it (``celeriac db sql``)."""
    parts = [f"{_CREATE_SCHEMA_TABLE};"]
    for m in MIGRATIONS:
        parts.append(
            f"\n-- version {m.version}: {m.name}\nBEGIN;\n{m.sql.strip()}\n"
            f"INSERT INTO {SCHEMA_TABLE} (version) VALUES ({m.version});\nCOMMIT;"
        )
    return "\n".join(parts) + "\n"


MESSAGE_COLUMNS = "headers, properties, content_type, content_encoding, body"
"""A message's columns, in the messages and dead-letter tables alike."""
NOTIFY = "SELECT pg_notify(c, '') FROM unnest(%s::text[]) AS c"
"""Wake the consumers of some queues (their channels: ``notify.channel_for``); delivered
at commit."""


_TABLE_NAMES = {SCHEMA_TABLE} | {
    t for m in MIGRATIONS for t in re.findall(r"CREATE (?:UNLOGGED )?TABLE (\w+)", m.sql)
}
_TABLES = re.compile(r"\b(" + "|".join(sorted(_TABLE_NAMES, key=len, reverse=True)) + r")\b")


def qualified(sql: str, schema: str) -> str:
    """``sql`` with each of celeriac's tables named in ``schema``: for a connection whose
    ``search_path`` is not the URL's (the application's own, ``app.transaction``)."""
    return _TABLES.sub(lambda m: f'"{schema}".{m.group(1)}', sql)
