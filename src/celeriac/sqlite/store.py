"""The ``sqlite://`` result store: one file, shared by the processes of one machine.

URLs follow the broker's (SQLAlchemy) convention, parsed by
:mod:`celeriac.sqlite.url`: ``sqlite:///relative.db``, ``sqlite:////abs.db``.
The default ``celeriac.db`` is the file the SQLite broker uses too; the
broker keeps to its own tables and this store to the ones below.

Schema (created with ``IF NOT EXISTS`` on connect, so processes that connect
at the same time all succeed):

``celeriac_results``, one row per stored task result
    ``key TEXT PRIMARY KEY``  ``celery-task-meta-<task id>`` (``ResultBackend.key_for``)
    ``value BLOB NOT NULL``   the encoded meta (json by default)
    ``expires_at REAL NULL``  Unix time after which the row is dead; NULL for
                              ``expires=None`` (kept forever)
    ``fence INTEGER NULL``    the fence of the write (``ResultBackend.store``);
                              NULL for an unfenced one. A fenced write replaces
                              a live row only if this is NULL or not higher.
                              Added by ``ALTER TABLE`` to files made before it.
    Lifetime: overwritten by each state of the task; dead once ``expires_at``
    passes (reads skip it at once); deleted by ``forget()`` or by the sweep
    that every 64th write of a connection runs over at most 256 dead rows.
``celeriac_results_expires_at``, partial index on ``expires_at`` (non-NULL)
    Lets the sweep find dead rows without a scan.
    The same table holds one-time claims (``celeriac-claim-<name>``, empty value).
``celeriac_result_members``, one row per (set, member): which tasks of a group finished
    ``key TEXT``, ``member TEXT`` (primary key together; ``celeriac-group-done-<group id>``
    and a task id), ``expires_at REAL NULL``. Lifetime: ``result_expires`` after
    the last member was added; expired members are deleted when the set is next added to.

Connections: two per backend, in autocommit mode. Statements run first on
the event loop, on one that never waits for a lock; when another connection
holds it, the call goes to the other one, a
:class:`celeriac.sqlite.connection.Connection` with its own thread (the kind
the broker's connections are), which waits there, so no sqlite3 call blocks
the event loop. WAL lets readers and the writer proceed together. Neither
uses SQLite's busy handler: the one busy policy (:mod:`celeriac.sqlite.busy`)
retries a busy lock on that thread, from 50 µs doubling, for 5 s.

Durability: ``synchronous=NORMAL``. In WAL mode a commit then survives any
crash of the process; only an OS crash or power loss can undo the last
commits, and it undoes a suffix of the WAL. On the default shared file the
worker stores a result before it acks the message (acks are NORMAL too), so
power loss that drops a result drops the later ack with it: the message is
delivered again and the task stores its result again. The next FULL commit
(any publish) makes every earlier frame durable. With results in a file of
their own (or a non-SQLite broker), power loss can drop the last results of
acked tasks; ``get`` then says the id is unknown rather than lying. FULL
would cost an fsync per stored state (two or three per task), for a record
that is not where the work's effects live; NORMAL is the better trade for a
result store.

Waiting: ``PRAGMA data_version`` changes when another connection commits
to the file, the broker's tables included. While any coroutine waits, one
watcher per backend reads it (the WAL header, no table access), every
0.1-0.5 ms at first, backing off to ``_WATCH_INTERVAL``; only when it moved
does the watcher run one query for all the waited keys, and it wakes just the
waiters whose row differs from the value they read. So broker traffic costs a
waiter nothing, and a hundred waiters cost one query per change, not a
hundred. This connection's own writes wake the waiters of their key directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from ..backends.base import BackendOptions, Changed, ResultBackend
from ..errors import BackendError
from ..shared_storage import StorageWrite
from .busy import connect, is_busy, retrying
from .connection import Connection
from .polling import Backoff, pause
from .url import parse_sqlite_url

__all__ = ["SQLiteBackend", "TABLE"]

TABLE = "celeriac_results"
MEMBERS_TABLE = "celeriac_result_members"

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL, fence INTEGER)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires_at ON {TABLE} (expires_at) "
    "WHERE expires_at IS NOT NULL",
    f"CREATE TABLE IF NOT EXISTS {MEMBERS_TABLE} "
    "(key TEXT, member TEXT, expires_at REAL, PRIMARY KEY (key, member)) WITHOUT ROWID",
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_SELECT = f"SELECT value FROM {TABLE} WHERE key = ? AND {_LIVE}"
_SELECT_MANY = f"SELECT key, value FROM {TABLE} WHERE {_LIVE} AND key IN"
_ADD_FENCE = f"ALTER TABLE {TABLE} ADD COLUMN fence INTEGER"
_UPSERT = (
    # ?1 key, ?2 value, ?3 expires_at, ?4 fence (NULL: unfenced), ?5 now
    f"INSERT INTO {TABLE} (key, value, expires_at, fence) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at,"
    f" fence = excluded.fence WHERE excluded.fence IS NULL OR {TABLE}.fence IS NULL"
    f" OR {TABLE}.fence <= excluded.fence OR {TABLE}.expires_at <= ?5"
)
_SWEEP_EVERY = 64
_SWEEP_LIMIT = 256
_SWEEP = (
    f"DELETE FROM {TABLE} WHERE key IN "
    f"(SELECT key FROM {TABLE} WHERE expires_at <= ? LIMIT {_SWEEP_LIMIT})"
)
_DELETE = f"DELETE FROM {TABLE} WHERE key = ?"
_ADD_MEMBER = (
    f"INSERT INTO {MEMBERS_TABLE} (key, member, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key, member) DO UPDATE SET expires_at = excluded.expires_at"
)
_COUNT_MEMBERS = f"SELECT COUNT(*) FROM {MEMBERS_TABLE} WHERE key = ? AND {_LIVE}"
_SWEEP_MEMBERS = f"DELETE FROM {MEMBERS_TABLE} WHERE key = ? AND expires_at <= ?"
_ADD = (
    # set if absent or expired
    f"INSERT INTO {TABLE} (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
    "WHERE expires_at IS NOT NULL AND expires_at <= ?"
)

_WATCH_INTERVAL = 0.005
"""Longest wait between two looks for a result (see ``celeriac.sqlite.polling``)."""
_KEYS_PER_QUERY = 500

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_Waiter = tuple[bytes | None, asyncio.Future[None]]


class SQLiteBackend(ResultBackend):
    """Results in a SQLite file, shared by every process that opens the same path."""

    scheme = "sqlite"

    def __init__(self, url: str, options: BackendOptions | None = None):
        super().__init__(url, options)
        self._path, _ = parse_sqlite_url(url)
        self.storage = f"sqlite:{self._path}"
        self._conn: Connection | None = None
        """Its own thread, for what meets a busy lock on the loop (as the broker's)."""
        self._fast: sqlite3.Connection | None = None
        """Used on the event loop itself, never waits for a lock (see ``_run``)."""
        self._writes = 0
        self._waiters: dict[str, list[_Waiter]] = {}
        self._recheck = False
        """A waiter registered since the watcher last compared rows."""
        self._watcher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        if self._conn is not None:
            return
        url = self.url

        def failed(exc: sqlite3.Error, opened: bool) -> Exception:
            return BackendError(f"result store {url} failed: {exc}")

        conn = Connection(url, partial(_open, self._path, url), failed)
        try:
            await conn.submit(_nothing)  # opens it, creating the tables
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._fast = connect(self._path)
        self._fast.execute("PRAGMA synchronous=NORMAL")

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        conn, fast = self._conn, self._fast
        self._conn = self._fast = None
        if fast is not None:
            fast.close()
        if conn is not None:
            await conn.close()

    async def _get(self, key: str) -> bytes | None:
        return await self._run(_select, key)

    async def _set(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> None:
        await self._run(_upsert, key, value, expires, fence, self._sweep_due())
        self._wake(key)  # our own commits do not change our data_version

    def _set_writes(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> list[StorageWrite]:
        now = time.time()
        row = (key, value, None if expires is None else now + expires, fence, now)
        writes = [StorageWrite(_UPSERT, [row])]
        if self._sweep_due():
            writes.append(StorageWrite(_SWEEP, [(now,)]))
        return writes

    def _sweep_due(self) -> bool:
        """Every ``_SWEEP_EVERY``-th write also deletes some expired rows."""
        self._writes += 1
        return self._writes % _SWEEP_EVERY == 1

    async def _add_member(self, key: str, member: str, expires: float | None) -> int:
        return await self._run(_add_member, key, member, expires)

    async def _add(self, key: str, value: bytes, expires: float | None) -> bool:
        added = await self._run(_add, key, value, expires)
        self._wake(key)
        return added

    async def _add_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        await self._run(_add_many, _add_rows(items))
        for key, *_ in items:
            self._wake(key)

    def _add_writes(self, items: Sequence[tuple[str, bytes, float | None]]) -> list[StorageWrite]:
        return [StorageWrite(_ADD, _add_rows(items))]

    async def _set_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        await self._run(_upsert_many, list(items), expires)
        for key, _ in items:
            self._wake(key)

    async def _delete(self, key: str) -> None:
        await self._run(_delete, key)
        self._wake(key)

    async def _wait_changed(
        self, key: str, seen: bytes | None, timeout: float | None, poll: float
    ) -> Changed | None:
        """Return once the row of ``key`` differs from ``seen``, or after ``poll``.

        The waiter registers the value it read, and the watcher wakes it once
        the row differs, so a commit landing between the read and the wait is
        not slept through.
        """
        waiter: _Waiter = (seen, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(key, []).append(waiter)
        self._recheck = True
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())
        try:
            async with asyncio.timeout(poll):
                await waiter[1]
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(key, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                self._waiters.pop(key, None)
        return None

    async def _watch(self) -> None:
        """Wake the waiters whose row differs from what they read, while any wait.

        Looks at ``data_version`` (``celeriac.sqlite.polling.Backoff``, up to every
        ``_WATCH_INTERVAL``); only when it moved (or a waiter just registered)
        one query for all the waited keys. Right here on the loop: a look
        costs a few microseconds, less than a thread hop, and readers of a WAL
        database do not wait for writers.
        """
        data_version = -1
        backoff = Backoff(_WATCH_INTERVAL)
        while self._waiters:
            await pause(backoff.next())
            keys, force, self._recheck = list(self._waiters), self._recheck, False
            if force:
                backoff.reset()
            if self._fast is None:  # closed: they read next and meet the error themselves
                self._wake_all()
                return
            try:
                data_version, rows = _look(self._fast, data_version, force, keys)
            except sqlite3.Error as exc:
                if is_busy(exc):
                    continue  # a moment of recovery: look again next round
                self._wake_all()
                return
            if rows is not None:
                for key, waiters in self._waiters.items():
                    for seen, future in waiters:
                        if rows.get(key) != seen and not future.done():
                            future.set_result(None)

    def _wake_all(self) -> None:
        """Every waiter reads next, and meets the error (if any) itself."""
        for key in list(self._waiters):
            self._wake(key)

    def _wake(self, key: str) -> None:
        for _, future in self._waiters.get(key, ()):
            if not future.done():
                future.set_result(None)

    async def _run(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(conn, *args)``; driver errors become BackendError.

        First right here on the event loop, on a connection that never waits
        for a lock: a statement here takes tens of microseconds, less than
        the hop to another thread. If another connection holds the write lock
        (SQLITE_BUSY at once), the call goes to the connection's own thread,
        which waits and retries there (``celeriac.sqlite.busy.retrying``)
        instead of blocking the loop.
        """
        conn, fast = self._conn, self._fast
        if conn is None or fast is None:
            raise BackendError(f"result store {self.url} is not connected; call connect() first")
        try:
            return fn(fast, *args)
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise BackendError(f"result store {self.url} failed: {exc}") from exc
        return await conn.submit(lambda db: fn(db, *args))


# Everything below runs on the connection's own thread.


def _open(path: Path, url: str) -> sqlite3.Connection:
    parent = path.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise BackendError(
            f"cannot open result store {url}: {parent} {problem}; "
            f"create the directory (mkdir -p {parent}) or point the URL at an existing one"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BackendError(
            f"cannot open result store {url}: directory {parent} is not writable "
            "(SQLite needs to create the -wal and -shm files beside the database); "
            "grant write access or point the URL at a writable directory"
        )
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open result store {url}: {exc}") from exc
    try:
        retrying(_create_schema, conn)
    except sqlite3.Error as exc:
        conn.close()
        raise BackendError(f"cannot set up result store {url}: {exc}") from exc
    return conn


def _nothing(conn: sqlite3.Connection) -> None:
    """A call that only makes the connection open."""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in _SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")}
    if "fence" not in columns:  # a file from before fences
        try:
            conn.execute(_ADD_FENCE)
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it meanwhile
                raise


def _select(conn: sqlite3.Connection, key: str) -> bytes | None:
    row = conn.execute(_SELECT, (key, time.time())).fetchone()
    return None if row is None else bytes(row[0])


def _look(
    conn: sqlite3.Connection, last_version: int, force: bool, keys: list[str]
) -> tuple[int, dict[str, bytes] | None]:
    """The data_version, and the live rows of ``keys`` if it moved or ``force``."""
    data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
    if data_version == last_version and not force:
        return data_version, None
    rows: dict[str, bytes] = {}
    now = time.time()
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[start : start + _KEYS_PER_QUERY]
        marks = ", ".join("?" * len(chunk))
        query = f"{_SELECT_MANY} ({marks})"
        rows.update((k, bytes(v)) for k, v in conn.execute(query, (now, *chunk)))
    return data_version, rows


def _upsert(
    conn: sqlite3.Connection,
    key: str,
    value: bytes,
    expires: float | None,
    fence: int | None,
    sweep: bool,
) -> None:
    now = time.time()
    conn.execute(_UPSERT, (key, value, None if expires is None else now + expires, fence, now))
    if sweep:
        conn.execute(_SWEEP, (now,))


def _add_member(conn: sqlite3.Connection, key: str, member: str, expires: float | None) -> int:
    """Add and count in one transaction, so the count includes this member."""
    now = time.time()
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SWEEP_MEMBERS, (key, now))
        conn.execute(_ADD_MEMBER, (key, member, None if expires is None else now + expires))
        return int(conn.execute(_COUNT_MEMBERS, (key, now)).fetchone()[0])


def _add(conn: sqlite3.Connection, key: str, value: bytes, expires: float | None) -> bool:
    now = time.time()
    cursor = conn.execute(_ADD, (key, value, None if expires is None else now + expires, now))
    return cursor.rowcount == 1


def _add_rows(items: Sequence[tuple[str, bytes, float | None]]) -> list[tuple[Any, ...]]:
    """Parameters of ``_ADD`` for (key, value, seconds to keep) items."""
    now = time.time()
    return [
        (key, value, None if expires is None else now + expires, now)
        for key, value, expires in items
    ]


def _add_many(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_ADD, rows)


def _upsert_many(
    conn: sqlite3.Connection, items: list[tuple[str, bytes]], expires: float | None
) -> None:
    now = time.time()
    expires_at = None if expires is None else now + expires
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_UPSERT, [(key, value, expires_at, None, now) for key, value in items])


def _delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute(_DELETE, (key,))
