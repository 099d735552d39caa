"""A SQLite connection with its own thread, group commit, and the shared publishing connections.

Connections and durability: the brokers of one process share one connection
per database file for publishing and admin work (``writers``: sync callers
make one broker per thread, and separate connections would queue for the one
write lock), and each consumer owns one for fetch/ack/heartbeat; every
``Connection`` has its own single thread, so the event loop never blocks on
SQLite. All use WAL and the one busy policy of :mod:`celeriac.sqlite.busy`
(no busy handler; a busy lock is retried on the connection's thread). The
publishing connection runs ``synchronous=FULL``: with WAL, NORMAL may lose a
committed transaction on power loss, and a publish must be durable when it
returns. Consumer connections run NORMAL: losing an ack, a lease or a release
to a power cut only causes a redelivery, which at-least-once allows (and a
FULL commit of any connection syncs every WAL frame written before it).

Group commit: publishes (``Insert``) that queue up for the publishing
connection while it commits (from any thread or task of the process) go into
its next transaction together, one ``executemany`` per kind of row, so one
fsync makes them all durable; each publish still returns only after that
commit. Only if the group fails does each go again in a savepoint of its own,
so one bad publish fails alone. No publish waits for company: a lone one
commits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._sync import may_block
from ..errors import BrokerError, BrokerUnavailable
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .busy import connect, is_busy, retrying
from .schema import INSERT, SCHEMA, Row
from .url import parse_sqlite_url

__all__ = [
    "Connection",
    "Insert",
    "broker_connection",
    "make_writes",
    "open_fast",
    "transaction",
    "writers",
]

T = TypeVar("T")

GROUP_LIMIT = 256
"""Most publishes that one group commit takes in."""


def transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` in one write transaction (the write lock taken up front)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


class Insert:
    """A publish's rows (and a result store's writes to make with them): the job
    that a connection's thread commits in groups."""

    __slots__ = ("rows", "writes")

    def __init__(self, rows: list[Row], writes: Sequence[StorageWrite]):
        self.rows = rows
        self.writes = writes

    @staticmethod
    def merge(inserts: Sequence[Insert]) -> Insert:
        """One job for several: every row in publish order, writes grouped by statement."""
        rows: list[Row] = []
        writes: dict[str, list[Any]] = {}
        for insert in inserts:
            rows += insert.rows
            for write in insert.writes:
                writes.setdefault(write.statement, []).extend(write.args)
        return Insert(rows, [StorageWrite(sql, args) for sql, args in writes.items()])

    def __call__(self, db: sqlite3.Connection) -> None:
        transaction(db, self.insert)

    def insert(self, db: sqlite3.Connection) -> None:
        db.executemany(INSERT, self.rows).close()
        make_writes(db, self.writes)


def make_writes(db: sqlite3.Connection, writes: Sequence[StorageWrite]) -> None:
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


class Connection:
    """One sqlite3 connection and the one thread allowed to use it.

    A plain thread fed by a ``SimpleQueue`` rather than a ThreadPoolExecutor:
    the round trip is about a third cheaper, and it is paid on every call. The
    connection opens lazily in that thread (creating the schema), so a
    consumer costs nothing until it first fetches. The thread is a daemon so
    an abandoned connection never holds up interpreter exit; SQLite's journal
    makes a write cut short that way safe.
    """

    def __init__(
        self,
        url: str,
        open_db: Callable[[], sqlite3.Connection],
        failed: Callable[[sqlite3.Error, bool], Exception],
    ):
        """``open_db`` opens and sets up the connection (in the connection's thread,
        on first use); ``failed(error, opened)`` is what a driver error becomes."""
        self.url = url
        self._open_db = open_db
        self._failed = failed
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
            if isinstance(work, Insert):
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

    def _gather(self, group: list[tuple[asyncio.Future[Any], Insert]]) -> _Job | None:
        """Add the publishes queued behind the first; return the first other job, if any."""
        while len(group) < GROUP_LIMIT and not self._jobs.empty():
            try:
                future, work = self._jobs.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(work, Insert):
                return future, work
            group.append((future, work))
        return None

    def _commit_group(self, group: list[tuple[asyncio.Future[Any], Insert]]) -> None:
        """Commit every publish of ``group`` in one transaction.

        First all together, in as few statements as there are kinds of rows:
        every call into SQLite gives up the GIL, and getting it back may wait
        for the producer threads, so fewer calls make a shorter commit under
        load. If that fails, once more with each publish in a savepoint of its
        own, so one that fails alone (a constraint) fails alone; a failed
        commit fails them all, and nothing of theirs is stored.
        """
        merged = Insert.merge([insert for _, insert in group])
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
        self, group: list[tuple[asyncio.Future[Any], Insert]]
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
                return self._call(lambda db: transaction(db, insert_each))
        except BaseException as exc:
            return [exc] * len(group)

    def _shut(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)``, retried while another connection holds the write lock
        (``celeriac.sqlite.busy.retrying``); driver errors become ``failed``'s."""
        try:
            try:
                return work(self._db or self._open())
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
            return retrying(self._on_db, work)  # off the hot path: its call costs ~0.2 µs
        except sqlite3.Error as exc:
            raise self._failed(exc, self._db is not None) from exc

    def _on_db(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return work(self._db or self._open())

    def _open(self) -> sqlite3.Connection:
        self._db = self._open_db()
        return self._db


def broker_connection(url: str, synchronous: str) -> Connection:
    """A connection to the broker's tables (created on open), ``synchronous`` FULL or NORMAL."""

    def open_db() -> sqlite3.Connection:
        path, _ = parse_sqlite_url(url)
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise BrokerUnavailable(
                f"cannot open the SQLite broker {redact_url(url)}: directory "
                f"{path.parent} does not exist or is not writable; create it, or point "
                "the broker URL at a writable directory"
            )
        db = connect(path)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except BaseException:
            db.close()
            raise
        return db

    def failed(exc: sqlite3.Error, opened: bool) -> Exception:
        error = BrokerError if opened else BrokerUnavailable
        return error(f"SQLite broker {redact_url(url)}: {exc}")

    return Connection(url, open_db, failed)


def open_fast(url: str) -> sqlite3.Connection:
    """A connection for the event loop: never waits for a lock, no fsync (leases only)."""
    path, _ = parse_sqlite_url(url)
    db = connect(path)
    db.execute("PRAGMA synchronous = NORMAL")
    return db


class Writers:
    """The publishing connection of each database file, shared by a process's brokers.

    Counted: the last broker to close closes it. A forked child starts with
    none, since the parent's connection threads do not exist in it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: dict[str, tuple[Connection, int]] = {}
        self._orphans: list[tuple[Connection, int]] = []

    def acquire(self, path: str, url: str) -> Connection:
        with self._lock:
            conn, users = self._shared.get(path) or (broker_connection(url, "FULL"), 0)
            self._shared[path] = (conn, users + 1)
            return conn

    def release(self, path: str, conn: Connection) -> bool:
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


writers = Writers()
os.register_at_fork(after_in_child=writers.forget_after_fork)
