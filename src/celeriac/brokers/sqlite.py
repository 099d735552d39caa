"""The embedded broker: one SQLite file shared by every process on one machine.

Tables (names are the ``*_TABLE`` constants; both live as long as the file):

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

Undecodable rows: a message row that holds no message (headers or properties
not a JSON object, text columns not UTF-8 text, ...: a corrupted disk or a
foreign writer) is moved to the dead-letter table the first time a fetch
leases it, as raw bytes (its five message columns as stored, joined by
newlines) with the reason ``undecodable message row: ...``, and logged on the
``celeriac.broker`` logger. The rest of the batch is delivered; fetch raises
nothing for it.

Connections and durability: the brokers of one process share one connection
per database file for publishing and admin work (sync callers make one
broker per thread, and separate connections would queue for the one write
lock, sleeping in SQLite's busy handler), and each consumer owns one for
fetch/ack/heartbeat; every connection has its own single thread, so the
event loop never blocks on SQLite. All use WAL with a busy timeout plus a
retry on SQLITE_BUSY. The publishing connection runs ``synchronous=FULL``:
with WAL, NORMAL may lose a committed transaction on power loss, and a
publish must be durable when it returns. Consumer connections run NORMAL:
losing an ack, a lease or a release to a power cut only causes a
redelivery, which at-least-once allows (and a FULL commit of any connection
syncs every WAL frame written before it).

Group commit: publishes that queue up for the publishing connection while it
commits (from any thread or task of the process) go into its next
transaction together, each in a savepoint of its own, so one fsync makes
them all durable; each publish still returns only after that commit. No
publish waits for company: a lone one commits at once.

Fetch is one ``BEGIN IMMEDIATE`` transaction that picks rows and leases them.
An idle consumer polls with backoff (1 ms doubling up to ``poll_interval``),
skips the query while ``PRAGMA data_version`` says no other connection wrote,
sleeps no longer than until the earliest delayed row or lease comes due, and
is woken at once by a publish through the same broker object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import orjson

from .._sync import may_block
from ..errors import BrokerError, BrokerUnavailable, MessageError, SerializationError
from ..polling import Backoff
from ..protocol import Message, Outgoing, encode_envelope
from ..shared_storage import StorageWrite
from ..sqlite_url import parse_sqlite_url
from ..url_schemes import redact_url
from .base import (
    Broker,
    BrokerOptions,
    Consumer,
    DeadLetter,
    Delivery,
    QueueStats,
    logger,
)

__all__ = ["DEAD_LETTERS_TABLE", "MESSAGES_TABLE", "SQLiteBroker"]

T = TypeVar("T")
Row = tuple[Any, ...]

MESSAGES_TABLE = "celeriac_messages"
DEAD_LETTERS_TABLE = "celeriac_dead_letters"
PRIORITIES = range(10)
BUSY_WAIT = 5.0
"""Seconds a call waits for another connection's write lock before it fails."""
GROUP_LIMIT = 256
"""Most publishes that one group commit takes in."""

_M, _D = MESSAGES_TABLE, DEAD_LETTERS_TABLE
_MESSAGE_COLUMNS = "headers, properties, content_type, content_encoding, body"
_PICKED_COLUMNS = ", ".join(f"CAST(m.{c} AS BLOB)" for c in _MESSAGE_COLUMNS.split(", "))
"""The message columns as a fetch reads them: bytes whatever was stored (sqlite3
would raise for the whole batch on TEXT that is not UTF-8), decoded by ``_message``."""

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


def _pick_sql(n_queues: int) -> str:
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


def _next_visible_sql(n_queues: int) -> str:
    """The earliest ``visible_at`` among queues ``?1...``, one index seek per (queue, priority)."""
    arms = " UNION ALL ".join(
        f"SELECT min(visible_at) AS v FROM {_M} WHERE queue = ?{q + 1} AND priority = {p}"
        for q in range(n_queues)
        for p in PRIORITIES
    )
    return f"SELECT min(v) FROM ({arms})"


def _message(row: Row) -> Message:
    """A Message from the five message columns; MessageError if they hold none."""
    headers, properties, content_type, content_encoding, body = row
    return Message.checked(
        _json("headers", headers),
        body,
        _text("content_type", content_type),
        _text("content_encoding", content_encoding),
        _json("properties", properties),
    )


def _json(column: str, value: Any) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"{column} are not JSON: {exc}") from exc


def _text(column: str, value: Any) -> str:
    if isinstance(value, str):  # as stored: a dead letter's columns
        return value
    if not isinstance(value, bytes):
        raise MessageError(f"{column} is {type(value).__name__}, not text")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"{column} is not UTF-8: {exc}") from exc


def _raw(columns: Row) -> bytes:
    """The message columns of a fetched row (bytes, or None for NULL), one per line."""
    return b"\n".join(c or b"" for c in columns)


def _write(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one write transaction (the write lock taken up front)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class _Insert:
    """A publish's rows (and a result store's writes to make with them): the job
    that a connection's thread commits in groups."""

    __slots__ = ("rows", "writes")

    def __init__(self, rows: list[Row], writes: Sequence[StorageWrite]):
        self.rows = rows
        self.writes = writes

    @staticmethod
    def merge(inserts: Sequence[_Insert]) -> _Insert:
        """One job for several: every row in publish order, writes grouped by statement."""
        rows: list[Row] = []
        writes: dict[str, list[Any]] = {}
        for insert in inserts:
            rows += insert.rows
            for write in insert.writes:
                writes.setdefault(write.statement, []).extend(write.args)
        return _Insert(rows, [StorageWrite(sql, args) for sql, args in writes.items()])

    def __call__(self, db: sqlite3.Connection) -> None:
        _write(db, self.insert)

    def insert(self, db: sqlite3.Connection) -> None:
        db.executemany(INSERT, self.rows).close()
        _make_writes(db, self.writes)


def _make_writes(db: sqlite3.Connection, writes: Sequence[StorageWrite]) -> None:
    """A result store's writes (``celeriac.shared_storage``), in the caller's transaction."""
    for write in writes:
        db.executemany(write.statement, write.args).close()


_Job = tuple["asyncio.Future[Any]", Callable[[sqlite3.Connection], Any] | None]
"""A call to make in a connection's thread, or None: close it and end the thread."""


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


class _Connection:
    """One sqlite3 connection and the one thread allowed to use it.

    A plain thread fed by a ``SimpleQueue`` rather than a ThreadPoolExecutor:
    the round trip is about a third cheaper, and it is paid on every call. The
    connection opens lazily in that thread (creating the schema), so a
    consumer costs nothing until it first fetches. The thread is a daemon so
    an abandoned connection never holds up interpreter exit; SQLite's journal
    makes a write cut short that way safe.
    """

    def __init__(self, url: str, synchronous: str):
        self.url = url
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy = threading.Lock()
        """Held while a thread uses the connection: its own thread, or a caller (``run``)."""

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="celeriac-sqlite", daemon=True)
            self._thread.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, work))
        return future

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)`` on the connection; right here when a sync caller may block for it.

        A sync ``delay()`` waits for its publish anyway: when the connection
        is free and nothing is queued for it, the caller's thread runs the
        work itself, saving two thread wake-ups (about half the cost of a
        publish besides its fsync). Otherwise the work queues for the
        connection's thread and joins its next group commit.
        """
        if may_block() and self._jobs.empty() and self._busy.acquire(blocking=False):
            try:
                return self._call(work)
            finally:
                self._busy.release()
        return await self.submit(work)

    async def close(self) -> None:
        """Close the connection after the calls already queued; the thread then ends."""
        if self._thread is not None:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._jobs.put((future, None))
            await future

    def _serve(self) -> None:
        later: _Job | None = None
        while True:
            future, work = later or self._jobs.get()
            later = None
            if isinstance(work, _Insert):
                group = [(future, work)]
                later = self._gather(group)
                if len(group) > 1:
                    self._commit_group(group)
                    continue
            result: Any = None
            error: BaseException | None = None
            try:
                with self._busy:
                    if work is None:
                        self._shut()
                    else:
                        result = self._call(work)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
            if work is None:
                return

    def _gather(self, group: list[tuple[asyncio.Future[Any], _Insert]]) -> _Job | None:
        """Add the publishes queued behind the first; return the first other job, if any."""
        while len(group) < GROUP_LIMIT and not self._jobs.empty():
            try:
                future, work = self._jobs.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(work, _Insert):
                return future, work
            group.append((future, work))
        return None

    def _commit_group(self, group: list[tuple[asyncio.Future[Any], _Insert]]) -> None:
        """Commit every publish of ``group`` in one transaction.

        First all together, in as few statements as there are kinds of rows:
        every call into SQLite gives up the GIL, and getting it back may wait
        for the producer threads, so fewer calls make a shorter commit under
        load. If that fails, once more with each publish in a savepoint of its
        own, so one that fails alone (a constraint) fails alone; a failed
        commit fails them all, and nothing of theirs is stored.
        """
        merged = _Insert.merge([insert for _, insert in group])
        try:
            with self._busy:
                self._call(merged)
            errors: list[BaseException | None] = [None] * len(group)
        except BrokerError:
            errors = self._commit_each(group)
        except BaseException as exc:
            errors = [exc] * len(group)
        for (future, _), error in zip(group, errors, strict=True):
            with contextlib.suppress(RuntimeError):  # that event loop is closed
                future.get_loop().call_soon_threadsafe(_settle, future, None, error)

    def _commit_each(
        self, group: list[tuple[asyncio.Future[Any], _Insert]]
    ) -> list[BaseException | None]:
        def insert_each(db: sqlite3.Connection) -> list[BaseException | None]:
            errors: list[BaseException | None] = []
            for _, insert in group:
                db.execute("SAVEPOINT publish")
                try:
                    insert.insert(db)
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO publish")
                    errors.append(BrokerError(f"SQLite broker {redact_url(self.url)}: {exc}"))
                else:
                    errors.append(None)
                db.execute("RELEASE publish")
            return errors

        try:
            with self._busy:
                return self._call(lambda db: _write(db, insert_each))
        except BaseException as exc:
            return [exc] * len(group)

    def _shut(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)``, retried while another connection holds the write lock.

        The connection itself never waits (busy timeout 0): SQLite's own busy
        handler sleeps at least a millisecond, when a lease or an ack holds
        the lock for tens of microseconds. Here the waits start at 50 µs and
        double up to 5 ms, for ``BUSY_WAIT`` seconds in all.
        """
        deadline = 0.0
        pause = 0.00005
        while True:
            try:
                return work(self._db or self._open())
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    now = time.monotonic()
                    deadline = deadline or now + BUSY_WAIT
                    if now < deadline:
                        time.sleep(pause)
                        pause = min(pause * 2, 0.005)
                        continue
                error = BrokerError if self._db is not None else BrokerUnavailable
                raise error(f"SQLite broker {redact_url(self.url)}: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        path, _ = parse_sqlite_url(self.url)
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise BrokerUnavailable(
                f"cannot open the SQLite broker {redact_url(self.url)}: directory "
                f"{path.parent} does not exist or is not writable; create it, or point "
                "the broker URL at a writable directory"
            )
        db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except BaseException:
            db.close()
            raise
        self._db = db
        return db


def _open_fast(url: str) -> sqlite3.Connection:
    """A connection for the event loop: never waits for a lock, no fsync (leases only)."""
    path, _ = parse_sqlite_url(url)
    db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value if type(value) is dict else dict(value))


class SQLiteConsumer(Consumer):
    """Leases rows to one owner token: the name plus a random suffix.

    The suffix keeps a restarted worker of the same name from renewing (by
    heartbeat) the leases its dead predecessor held.
    """

    def __init__(self, broker: SQLiteBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._broker = broker
        self._owner = f"{name}#{secrets.token_hex(4)}"
        self._conn = _Connection(broker.url, "NORMAL")
        broker._connections.add(self._conn)
        self._pick = _pick_sql(len(self.queues))
        self._next_visible_sql = _next_visible_sql(len(self.queues))
        self._fast: sqlite3.Connection | None = None
        """Leases taken on the event loop itself; never waits for a lock (see ``_take_here``)."""
        self._data_version = -1
        self._idle = False
        self._next_visible = 0.0

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """The writes, the acks and the first lease in one transaction; then, while
        nothing is visible, looks again with backoff until ``timeout``."""
        deadline = time.monotonic() + timeout
        backoff = Backoff(self.options.poll_interval)
        again: Callable[[sqlite3.Connection], list[Row]] = partial(self._look, limit=limit)
        look = again
        if acks or writes:
            ids = orjson.dumps([d.tag for d in acks])
            look = partial(self._ack_and_lease, ids=ids, limit=limit, writes=writes)
        while True:
            rows = self._take_here(look)
            if rows is None:  # the lock is taken: wait for it on the connection's thread
                rows = await self._take_on_thread(look)
            look = again  # the acks are settled by now
            if rows:
                deliveries = await self._deliveries(rows)
                if deliveries:
                    return deliveries
                continue  # every row was garbage, now dead-lettered: look again at once
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._broker._nap(
                min(backoff.next(), remaining, max(self._next_visible - time.time(), 0.0))
            )

    async def _deliveries(self, rows: list[Row]) -> list[Delivery]:
        """Deliveries of leased rows; rows that hold no message go to the dead letters.

        If that move fails, every row goes back (uncounted) for the next fetch.
        """
        deliveries: list[Delivery] = []
        garbage: list[tuple[Row, str]] = []
        for row in rows:
            try:
                deliveries.append(Delivery(_message(row[3:]), row[1], row[2] + 1, row[0]))
            except MessageError as exc:
                garbage.append((row, f"undecodable message row: {exc}"))
        if garbage:
            try:
                await self._bury_garbage(garbage)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._release_rows(rows)
                raise
        return deliveries

    async def _bury_garbage(self, garbage: list[tuple[Row, str]]) -> None:
        """Move leased rows into the dead-letter table as raw bytes, with their reasons."""

        def move(db: sqlite3.Connection) -> None:
            now = time.time()
            for row, reason in garbage:
                db.execute(DEAD_LETTER_ROW, (reason, now, _raw(row[3:]), row[0], self._owner))
                db.execute(DELETE_OWNED, (row[0], self._owner))

        await self._conn.run(lambda db: _write(db, move))
        for row, reason in garbage:
            logger.error("dead-lettered row %d from queue %r: %s", row[0], row[1], reason)

    async def _take_on_thread(self, look: Callable[[sqlite3.Connection], list[Row]]) -> list[Row]:
        job = self._conn.submit(look)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # The rows may be leased already: hand them back before giving up.
            await self._release_rows(await job)
            raise

    def _take_here(self, look: Callable[[sqlite3.Connection], list[Row]]) -> list[Row] | None:
        """Run ``look`` right here on the loop, or None if another writer holds the lock.

        A lease transaction takes tens of microseconds, less than the hop to
        the connection's thread; but waiting for another process's write lock
        must not block the loop, so this connection never waits (busy timeout
        0) and a busy database sends the call to the thread instead.
        """
        if self._fast is None:
            try:
                self._fast = _open_fast(self.broker.url)
            except sqlite3.Error:
                return None
        try:
            return look(self._fast)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                self._data_version = -1  # the thread's connection has its own counter
                return None
            raise BrokerError(f"SQLite broker {redact_url(self.broker.url)}: {exc}") from exc

    async def _release_rows(self, rows: list[Row]) -> None:
        ids = [r[0] for r in rows]
        if ids:
            await self._conn.run(lambda db: self._release_ids(db, ids, None, 1))

    def _look(self, db: sqlite3.Connection, limit: int) -> list[Row]:
        """Lease up to ``limit`` visible rows, skipping the query when nothing changed."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if self._idle and version == self._data_version and time.time() < self._next_visible:
            return []
        self._data_version = version
        params = (time.time(), limit, *self.queues)
        if self._idle and db.execute(self._pick, params).fetchone() is None:
            (earliest,) = db.execute(self._next_visible_sql, self.queues).fetchone()
            self._next_visible = float("inf") if earliest is None else earliest
            return []
        rows = _write(db, lambda db: self._lease(db, limit))
        self._idle = not rows
        if not rows:
            self._next_visible = 0.0  # look again (and fetch the earliest) next time
        return rows

    def _ack_and_lease(
        self, db: sqlite3.Connection, ids: bytes, limit: int, writes: Sequence[StorageWrite]
    ) -> list[Row]:
        def work(db: sqlite3.Connection) -> list[Row]:
            self._settle(db, ids, writes)
            return self._lease(db, limit)

        rows = _write(db, work)
        self._idle = not rows
        if not rows:
            self._next_visible = 0.0
        return rows

    def _lease(self, db: sqlite3.Connection, limit: int) -> list[Row]:
        now = time.time()
        rows = db.execute(self._pick, (now, limit, *self.queues)).fetchall()
        if rows:
            ids = orjson.dumps([r[0] for r in rows])
            db.execute(LEASE, (self._owner, now + self.options.lease_timeout, ids))
        return rows

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        ids = orjson.dumps([d.tag for d in deliveries])
        if not writes:
            await self._conn.run(lambda db: db.execute(ACK, (self._owner, ids)).close())
            return
        await self._conn.run(lambda db: _write(db, lambda db: self._settle(db, ids, writes)))

    def _settle(self, db: sqlite3.Connection, ids: bytes, writes: Sequence[StorageWrite]) -> None:
        """A result store's writes, then the acks (inside the caller's transaction)."""
        _make_writes(db, writes)
        db.execute(ACK, (self._owner, ids)).close()

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        ids = [d.tag for d in deliveries]
        await self._conn.run(lambda db: self._release_ids(db, ids, not_before, int(uncount)))

    def _release_ids(
        self, db: sqlite3.Connection, ids: list[int], not_before: float | None, uncount: int
    ) -> None:
        visible_at = time.time() if not_before is None else not_before
        db.execute(RELEASE, (visible_at, uncount, self._owner, orjson.dumps(ids)))
        self._idle = False  # data_version does not see this connection's own writes

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        def move(db: sqlite3.Connection) -> None:
            db.execute(DEAD_LETTER, (reason, time.time(), delivery.tag, self._owner))
            db.execute(DELETE_OWNED, (delivery.tag, self._owner))

        await self._conn.run(lambda db: _write(db, move))

    async def _heartbeat(self) -> None:
        lease = self.options.lease_timeout
        await self._conn.run(
            lambda db: db.execute(HEARTBEAT, (time.time() + lease, self._owner)).close()
        )

    async def _close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._broker._connections.discard(self._conn)
        await self._conn.close()


class SQLiteBroker(Broker):
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``: see the module docstring."""

    scheme = "sqlite"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        self._path = str(parse_sqlite_url(url)[0])  # a malformed URL fails here
        self.storage = f"sqlite:{self._path}"
        self._shared_writer: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._published: asyncio.Event | None = None

    def consumer(self, queues: Sequence[str], name: str) -> SQLiteConsumer:
        return SQLiteConsumer(self, queues, name)

    async def connect(self) -> None:
        await self._writer.run(lambda db: None)

    @property
    def _writer(self) -> _Connection:
        """The process's publishing connection to this file, shared with its other brokers."""
        if self._shared_writer is None:
            self._shared_writer = _writers.acquire(self._path, self.url)
        return self._shared_writer

    async def close(self) -> None:
        connections, self._connections = self._connections, set()
        for conn in connections:
            await conn.close()
        writer, self._shared_writer = self._shared_writer, None  # connect() may open it again
        if writer is not None and _writers.release(self._path, writer):
            await writer.close()

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        await self._publish_with(batch, ())

    async def _publish_with(
        self, batch: Sequence[Outgoing], writes: Sequence[StorageWrite]
    ) -> None:
        now = time.time()
        try:
            rows = [
                (
                    o.queue,
                    o.priority,
                    o.not_before or now,
                    _dumps(o.message.headers),
                    _dumps(o.message.properties),
                    o.message.content_type,
                    o.message.content_encoding,
                    o.message.body,
                )
                for o in batch
            ]
        except orjson.JSONEncodeError as exc:
            raise SerializationError(f"message headers or properties are not JSON: {exc}") from exc
        await self._writer.run(_Insert(rows, writes))
        if self._published is not None:
            self._published.set()
            self._published = None

    async def _nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a publish through this object ends the nap early."""
        if self._published is None:
            self._published = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._published.wait(), seconds)

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
        return [_dead_letter(row) for row in rows]

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        now, wanted = time.time(), orjson.dumps([int(i) for i in ids if i.isdigit()])

        def move(db: sqlite3.Connection) -> int:
            count = db.execute(REQUEUE_DEAD, (now, wanted)).rowcount
            db.execute(DELETE_REQUEUED, (wanted,))
            return count

        return await self._writer.run(lambda db: _write(db, move))

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        sql, params = (PURGE_DEAD, ()) if queue is None else (PURGE_DEAD_OF_QUEUE, (queue,))
        return await self._writer.run(lambda db: db.execute(sql, params).rowcount)

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        params = (queue, reason, time.time(), raw)
        await self._writer.run(lambda db: db.execute(DEAD_LETTER_RAW, params).close())


class _Writers:
    """The publishing connection of each database file, shared by a process's brokers.

    Counted: the last broker to close closes it. A forked child starts with
    none, since the parent's connection threads do not exist in it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: dict[str, tuple[_Connection, int]] = {}
        self._orphans: list[tuple[_Connection, int]] = []

    def acquire(self, path: str, url: str) -> _Connection:
        with self._lock:
            conn, users = self._shared.get(path) or (_Connection(url, "FULL"), 0)
            self._shared[path] = (conn, users + 1)
            return conn

    def release(self, path: str, conn: _Connection) -> bool:
        """Drop one user of ``conn``; True when it has no user left (the caller closes it)."""
        with self._lock:
            current, users = self._shared.get(path, (None, 0))
            if current is not conn:
                return False  # from before a fork: never shared with this process
            if users > 1:
                self._shared[path] = (conn, users - 1)
                return False
            del self._shared[path]
            return True

    def forget_after_fork(self) -> None:
        # The inherited connections stay referenced and unclosed: SQLite must
        # not close in the child a connection the parent opened (this process
        # holds none of its locks, and closing could checkpoint the WAL away).
        self._lock = threading.Lock()
        self._orphans.extend(self._shared.values())
        self._shared = {}


_writers = _Writers()
os.register_at_fork(after_in_child=_writers.forget_after_fork)


def _dead_letter(row: Row) -> DeadLetter:
    id_, queue, reason, delivery_count, dead_at = row[:5]
    if row[5] is None:  # raw bytes, never a message
        return DeadLetter(str(id_), queue, None, row[9], reason, delivery_count, dead_at)
    message = _message(row[5:])
    raw = encode_envelope(message, queue)
    return DeadLetter(str(id_), queue, message, raw, reason, delivery_count, dead_at)
