"""The SQLite broker's tables, indexes and statements, and how a row holds a message.

Tables (names are the ``*_TABLE`` constants; each lives as long as the file;
the result store's tables, in the same file by default, are listed in
:mod:`celeriac.sqlite.store`):

``celeriac_messages``, one row per message not yet acked, from publish to ack
(or to purge, or to the move into the dead-letter table):

* ``id`` INTEGER PRIMARY KEY AUTOINCREMENT: publish order, never reused, so a
  late ack can never hit a newer message; the delivery tag.
* ``queue`` TEXT: the queue name.
* ``priority`` INTEGER 0-9, 9 delivered first.
* ``visible_at`` REAL, UNIX time: when the row may next be fetched. The
  ``not_before`` of a delayed message; the lease expiry of a fetched one.
* ``owner`` TEXT NULL: the consumer token holding the lease, NULL when
  nobody does. A row with an owner and ``visible_at <= now`` is a lapsed
  lease: its consumer died, and the next fetch takes it over.
* ``delivery_count`` INTEGER: fetches without an ack (the dead-letter rule).
* ``headers``, ``properties`` BLOB: the message's JSON (orjson); ``body``
  BLOB; ``content_type``, ``content_encoding`` TEXT. Columns rather than one
  kombu envelope: a fetched message equals the published one exactly (the
  envelope adds properties), and decoding skips a base64 pass.

Indexes: ``celeriac_messages_fetch (queue, priority, visible_at)`` answers
"visible rows of this queue at this priority, oldest first" with one seek per
(queue, priority) pair, however many delayed or leased rows sit in between;
``celeriac_messages_owner (owner) WHERE owner IS NOT NULL`` serves heartbeats.

``celeriac_dead_letters``, one row per dead letter, from the dead-lettering
until requeued or purged: ``id``, ``queue``, ``priority``, ``reason``, ``delivery_count``,
``dead_at`` (UNIX time), and the message columns as above; for bytes that were
never a message, ``headers`` (and the other message columns) are NULL and
``body`` holds the raw bytes. Index ``celeriac_dead_letters_queue (queue, id)``.

``celeriac_operations``, the operations plane's events, mailbox commands and
replies (:mod:`celeriac.sqlite.operations`), one row each, from the send until
a later send prunes it, ``celeriac.sqlite.operations.KEEP`` seconds on (nobody
is owed an old one):

* ``id`` INTEGER PRIMARY KEY AUTOINCREMENT: send order, never reused, so a
  subscriber that read up to an id misses nothing by reading after it.
* ``channel`` TEXT: ``events``, ``mailbox`` or ``reply:<routing key>``.
* ``sent_at`` REAL, UNIX time; index ``celeriac_operations_age (sent_at)`` for the pruning.
* ``headers``, ``body`` BLOB: JSON objects (kombu's type tags).

``celeriac_revoked``, one row per revoked task id (WITHOUT ROWID), from the
revoke until a read finds it expired: ``task_id`` TEXT PRIMARY KEY, ``until``
REAL (UNIX time; a later revoke of the id keeps the later one).

``celeriac_beat_lease``, beat's leader lease (:mod:`celeriac.sqlite.beat`), one
row (WITHOUT ROWID), from the first claim for as long as the file (a release
or a lapse only moves ``expires_at``): ``lease`` TEXT PRIMARY KEY (``beat``),
``holder`` TEXT (the last holder), ``token`` INTEGER (one more for each new
holder: the fence of ``celeriac_beat_runs``), ``expires_at`` REAL (UNIX time
by the machine's clock: the last renewal plus its ttl, or the release).

``celeriac_beat_runs``, one row per periodic entry ever recorded (WITHOUT
ROWID), as long as the file (an entry dropped from the schedule keeps its few
bytes): ``entry`` TEXT PRIMARY KEY, ``tick`` REAL (UNIX time of its last tick
sent; only ever moves later). Like every table here, both are created (``IF NOT
EXISTS``) whenever a broker connection opens the file, so a file made before
them gains them on its next open.

Undecodable rows: a message row that holds no message (headers or properties
not a JSON object, text columns not UTF-8 text, ...: a corrupted disk or a
foreign writer) raises ``MessageError`` in ``decode_message``; the consumer
then moves it to the dead-letter table the first time a fetch leases it, as
raw bytes (``raw_bytes``: its five message columns as stored, joined by
newlines) with the reason ``undecodable message row: ...``.
"""

from __future__ import annotations

from typing import Any

Row = tuple[Any, ...]

MESSAGES_TABLE = "celeriac_messages"
DEAD_LETTERS_TABLE = "celeriac_dead_letters"
OPERATIONS_TABLE = "celeriac_operations"
REVOKED_TABLE = "celeriac_revoked"
BEAT_LEASE_TABLE = "celeriac_beat_lease"
BEAT_RUNS_TABLE = "celeriac_beat_runs"
PRIORITIES = range(10)
_M, _D, _O, _R = MESSAGES_TABLE, DEAD_LETTERS_TABLE, OPERATIONS_TABLE, REVOKED_TABLE
_BL, _BR = BEAT_LEASE_TABLE, BEAT_RUNS_TABLE
_MESSAGE_COLUMNS = "headers, properties, content_type, content_encoding, body"
_PICKED_COLUMNS = ", ".join(f"CAST(m.{c} AS BLOB)" for c in _MESSAGE_COLUMNS.split(", "))
"""The message columns as a fetch reads them: bytes whatever was stored (sqlite3
would raise for the whole batch on TEXT that is not UTF-8), decoded by ``decode_message``."""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_M} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    visible_at REAL NOT NULL,
    owner TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS {_M}_fetch ON {_M} (queue, priority, visible_at);
CREATE INDEX IF NOT EXISTS {_M}_owner ON {_M} (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS {_D} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    reason TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    dead_at REAL NOT NULL,
    headers BLOB,
    properties BLOB,
    content_type TEXT,
    content_encoding TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS {_D}_queue ON {_D} (queue, id);
CREATE TABLE IF NOT EXISTS {_O} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    sent_at REAL NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS {_O}_age ON {_O} (sent_at);
CREATE TABLE IF NOT EXISTS {_R} (
    task_id TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {_BL} (
    lease TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {_BR} (
    entry TEXT PRIMARY KEY,
    tick REAL NOT NULL
) WITHOUT ROWID;
"""

INSERT = (
    f"INSERT INTO {_M} (queue, priority, visible_at, {_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
)
LEASE = (
    f"UPDATE {_M} SET owner = ?1, visible_at = ?2, delivery_count = delivery_count + 1"
    " WHERE id IN (SELECT value FROM json_each(?3))"
)
HEARTBEAT = f"UPDATE {_M} SET visible_at = ?1 WHERE owner = ?2"
ACK = f"DELETE FROM {_M} WHERE owner = ?1 AND id IN (SELECT value FROM json_each(?2))"
RELEASE = (
    f"UPDATE {_M} SET owner = NULL, visible_at = ?1, delivery_count = delivery_count - ?2"
    " WHERE owner = ?3 AND id IN (SELECT value FROM json_each(?4))"
)
DEAD_LETTER = (
    f"INSERT INTO {_D} (queue, priority, reason, delivery_count, dead_at, {_MESSAGE_COLUMNS})"
    f" SELECT queue, priority, ?1, delivery_count, ?2, {_MESSAGE_COLUMNS} FROM {_M}"
    " WHERE id = ?3 AND owner = ?4"
)
DELETE_OWNED = f"DELETE FROM {_M} WHERE id = ?1 AND owner = ?2"
DEAD_LETTER_RAW = (
    f"INSERT INTO {_D} (queue, priority, reason, delivery_count, dead_at, body)"
    " VALUES (?, 0, ?, 0, ?, ?)"
)
DEAD_LETTER_ROW = (
    f"INSERT INTO {_D} (queue, priority, reason, delivery_count, dead_at, body)"
    f" SELECT queue, priority, ?1, delivery_count, ?2, ?3 FROM {_M} WHERE id = ?4 AND owner = ?5"
)
STATS = (
    "SELECT coalesce(sum(visible_at <= ?1), 0),"
    " coalesce(sum(visible_at > ?1 AND owner IS NULL), 0),"
    f" coalesce(sum(visible_at > ?1 AND owner IS NOT NULL), 0) FROM {_M} WHERE queue = ?2"
)
PURGE = f"DELETE FROM {_M} WHERE queue = ?1 AND (owner IS NULL OR visible_at <= ?2)"
DEAD_COLUMNS = f"id, queue, reason, delivery_count, dead_at, {_MESSAGE_COLUMNS}"
LIST_DEAD = f"SELECT {DEAD_COLUMNS} FROM {_D} ORDER BY id LIMIT ?1"
LIST_DEAD_OF_QUEUE = f"SELECT {DEAD_COLUMNS} FROM {_D} WHERE queue = ?2 ORDER BY id LIMIT ?1"
REQUEUE_DEAD = (
    f"INSERT INTO {_M} (queue, priority, visible_at, {_MESSAGE_COLUMNS})"
    f" SELECT queue, priority, ?1, {_MESSAGE_COLUMNS} FROM {_D}"
    " WHERE headers IS NOT NULL AND id IN (SELECT value FROM json_each(?2))"
)
DELETE_REQUEUED = (
    f"DELETE FROM {_D} WHERE headers IS NOT NULL AND id IN (SELECT value FROM json_each(?1))"
)
PURGE_DEAD = f"DELETE FROM {_D}"
PURGE_DEAD_OF_QUEUE = f"DELETE FROM {_D} WHERE queue = ?1"
SEND = f"INSERT INTO {_O} (channel, sent_at, headers, body) VALUES (?,?,?,?)"
PRUNE_SENT = f"DELETE FROM {_O} WHERE sent_at < ?1"
LAST_SENT = f"SELECT coalesce(max(id), 0) FROM {_O}"
READ_SENT = (
    f"SELECT id, headers, body FROM {_O} WHERE id > ?1 AND channel = ?2 ORDER BY id LIMIT ?3"
)
REVOKE = (
    f"INSERT INTO {_R} (task_id, until) VALUES (?1, ?2)"
    " ON CONFLICT (task_id) DO UPDATE SET until = max(until, excluded.until)"
)
LIST_REVOKED = f"SELECT task_id, until FROM {_R}"
FORGET_REVOKED = f"DELETE FROM {_R} WHERE until <= ?1"
BEAT_LEASE = f"SELECT holder, token, expires_at FROM {_BL} WHERE lease = 'beat'"
SET_BEAT_LEASE = (
    f"INSERT INTO {_BL} (lease, holder, token, expires_at) VALUES ('beat', ?1, ?2, ?3)"
    " ON CONFLICT (lease) DO UPDATE SET holder = excluded.holder, token = excluded.token,"
    " expires_at = excluded.expires_at"
)
RELEASE_BEAT_LEASE = (
    f"UPDATE {_BL} SET expires_at = ?1"
    " WHERE lease = 'beat' AND token = ?2 AND holder = ?3 AND expires_at > ?1"
)
RECORD_BEAT_RUN = (
    # ?1 entry, ?2 tick, ?3 the recording lease's token: nothing unless it is current
    f"INSERT INTO {_BR} (entry, tick) SELECT ?1, ?2"
    f" WHERE EXISTS (SELECT 1 FROM {_BL} WHERE lease = 'beat' AND token = ?3)"
    f" ON CONFLICT (entry) DO UPDATE SET tick = excluded.tick WHERE excluded.tick > {_BR}.tick"
)
LIST_BEAT_RUNS = f"SELECT entry, tick FROM {_BR}"


def pick_sql(n_queues: int) -> str:
    """Visible rows of queues ``?3...`` by priority, visibility, id; ``?1`` now, ``?2`` limit.

    One ordered index range per (queue, priority): SQLite cannot keep index
    order across an ``IN`` list, and one range per queue would walk through
    every delayed or leased row of a higher priority.
    """
    arms = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority AS p, visible_at AS v FROM {_M}"
        f" WHERE queue = ?{q + 3} AND priority = {p} AND visible_at <= ?1"
        " ORDER BY visible_at, id LIMIT ?2)"
        for q in range(n_queues)
        for p in PRIORITIES
    )
    return (
        f"SELECT m.id, m.queue, m.delivery_count, {_PICKED_COLUMNS}"
        f" FROM ({arms}) AS pick JOIN {_M} AS m ON m.id = pick.id"
        " ORDER BY pick.p DESC, pick.v, pick.id LIMIT ?2"
    )


def next_visible_sql(n_queues: int) -> str:
    """The earliest ``visible_at`` among queues ``?1...``, one index seek per (queue, priority)."""
    arms = " UNION ALL ".join(
        f"SELECT min(visible_at) AS v FROM {_M} WHERE queue = ?{q + 1} AND priority = {p}"
        for q in range(n_queues)
        for p in PRIORITIES
    )
    return f"SELECT min(v) FROM ({arms})"
