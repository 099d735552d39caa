"""The ``postgresql://`` result store: results beside the broker's tables, in one schema.

URL: as the broker's (:mod:`celeriac.postgres.url`, ``?schema=``). Tables
(migration 2 of :mod:`celeriac.postgres.schema`, applied on first connect;
times are the server's clock, so clients' clocks may disagree):

``celeriac_results``, one row per stored task result, saved group and claim
    ``key`` text PRIMARY KEY: ``celery-task-meta-<task id>``,
    ``celery-taskset-meta-<group id>`` or ``celeriac-claim-<name>``;
    ``value`` bytea: the encoded meta (json by default); ``expires_at``
    timestamptz, NULL for ``expires=None``; ``fence`` bigint, NULL for an
    unfenced write. A fenced write replaces a live row only if its fence is NULL
    or not higher (``ResultBackend.store``). Lifetime: overwritten by each state;
    dead once ``expires_at`` passes (reads skip it at once), deleted by
    ``forget()`` or the purge. Index ``celeriac_results_expires_at``.
``celeriac_result_sets``, one row per counted set (``mark_done``)
    ``key`` text PRIMARY KEY (``celeriac-group-done-<group id>``), ``done``
    integer: distinct members of the current run, ``started_at``: when the run
    began, ``expires_at``: ``result_expires`` after the last addition. An
    addition to an expired set starts a new run at 0.
``celeriac_result_members``, one row per (set, member)
    ``key`` text REFERENCES ``celeriac_result_sets`` ON DELETE CASCADE,
    ``member`` text (primary key together), ``added_at``: a member added before
    its set's ``started_at`` belongs to an expired run and counts again.
``celeriac_chords``, one row per chord, from ``set_chord_size``
    ``group_id`` text PRIMARY KEY, ``size`` and ``done`` integer (distinct header
    results recorded), ``token`` text: who may send the body (NULL: nobody yet,
    ``done``: it was sent or failed), ``lease_until``: the holder's lease
    (``CLAIM_SECONDS``, renewed for ``SEND_SECONDS`` by ``hold_chord``; a
    redelivered header task takes over a lapsed one), ``expires_at``:
    ``result_expires`` after the last part.
``celeriac_chord_parts``, one row per header result of a chord
    ``group_id`` REFERENCES ``celeriac_chords`` ON DELETE CASCADE, ``task_id``
    (primary key together: a duplicate delivery is recorded once), ``position``
    (the ``group_index``), ``value`` bytea (the encoded final meta). Deleted
    when the body was sent or failed.

Each chord part is one statement: insert the part, ``UPDATE celeriac_chords SET
done = done + <inserted>`` and claim, ``RETURNING`` whether this call claimed.
``mark_done`` is one statement too. PostgreSQL serializes both on the row lock.

Expiry: each store object purges (``DELETE`` of the expired rows of
``celeriac_results``, ``celeriac_result_sets`` and ``celeriac_chords``, the
members and parts by cascade) from a task it starts on connect, every
``purge_interval`` seconds (60), so at most that often per process.

Waiting: a stored result (``_UPSERT``, also inside the broker's transaction)
sends ``NOTIFY celeriac_results_<hash of the schema>, '<key>'`` when it commits
(with the value after a newline, when it is short ASCII: ``result_listener.payload``,
so the waiter needs no read).
Each store object opens one listening connection when the first waiter needs
it (:func:`celeriac.postgres.connection.connect`); a waiter registers, reads its
key once more (a commit between the base class's read and the registration is
not missed), then sleeps until a notification of its key, or ``RECHECK``
seconds. No polling while that connection lives; when it is lost every waiter
wakes and reads, and waits poll (the base class's backoff) until a new
listening connection opens, tried at most every ``RELISTEN`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import states
from ..backends.base import BackendOptions, Changed, ChordJoin, ResultBackend, ResultMeta
from ..errors import BackendError, BrokerUnavailable, ConfigurationError
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .connection import open_pool
from .result_listener import ResultListener, payload
from .schema import ensure_schema
from .url import split_schema, storage_name

try:
    import psycopg
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the PostgreSQL result store needs psycopg: pip install 'celeriac[postgres]'"
    ) from exc

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresBackend"]

RECHECK = 5.0
"""Longest sleep of a waiter between two reads while notifications work (a safety net)."""
CLAIM_SECONDS = 6.0
"""The lease of the part that completed a chord until it sends the body (Celery's)."""
SEND_SECONDS = 21.0
"""The lease renewed right before the body is sent (Celery's)."""

_DONE = "done"
_EXPIRES = "now() + make_interval(secs => %s::float8)"
"""``expires_at`` for a number of seconds, NULL (never) for None."""
_LIVE = "(expires_at IS NULL OR expires_at > now())"

_SELECT = f"SELECT value FROM celeriac_results WHERE key = %s AND {_LIVE}"
_SELECT_MANY = f"SELECT key, value FROM celeriac_results WHERE key = ANY(%s) AND {_LIVE}"
_UPSERT = (
    # key, value, seconds to keep, fence (NULL: unfenced), channel, payload (notified)
    "WITH stored AS (INSERT INTO celeriac_results AS r (key, value, expires_at, fence)"
    f" VALUES (%s, %s, {_EXPIRES}, %s::bigint) ON CONFLICT (key) DO UPDATE"
    " SET value = excluded.value, expires_at = excluded.expires_at, fence = excluded.fence"
    " WHERE excluded.fence IS NULL OR r.fence IS NULL OR r.fence <= excluded.fence"
    " OR r.expires_at <= now() RETURNING r.key)"
    " SELECT pg_notify(%s, %s) FROM stored"
)
_ADD = (
    # key, value, seconds to keep: set if absent or expired
    "INSERT INTO celeriac_results AS r (key, value, expires_at)"
    f" VALUES (%s, %s, {_EXPIRES}) ON CONFLICT (key) DO UPDATE"
    " SET value = excluded.value, expires_at = excluded.expires_at, fence = NULL"
    " WHERE r.expires_at <= now() RETURNING 1"
)
_ADD_ROWS = (
    # keys, values, seconds to keep, as three arrays: _ADD for many rows in one statement
    "INSERT INTO celeriac_results AS r (key, value, expires_at)"
    " SELECT k, v, now() + make_interval(secs => e)"
    " FROM unnest(%s::text[], %s::bytea[], %s::float8[]) AS t(k, v, e)"
    " ON CONFLICT (key) DO UPDATE"
    " SET value = excluded.value, expires_at = excluded.expires_at, fence = NULL"
    " WHERE r.expires_at <= now()"
)
_DELETE = "DELETE FROM celeriac_results WHERE key = %s"
_ADD_MEMBER = (
    # key, member, key, seconds to keep
    "WITH added AS (INSERT INTO celeriac_result_members AS m (key, member, added_at)"
    " VALUES (%s, %s, now()) ON CONFLICT (key, member) DO UPDATE SET added_at = now()"
    " WHERE NOT EXISTS (SELECT 1 FROM celeriac_result_sets s WHERE s.key = m.key"
    " AND (s.expires_at IS NULL OR s.expires_at > now()) AND s.started_at <= m.added_at)"
    " RETURNING 1)"
    " INSERT INTO celeriac_result_sets AS s (key, done, started_at, expires_at)"
    f" SELECT %s, count(*), now(), {_EXPIRES} FROM added"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at,"
    " done = CASE WHEN s.expires_at <= now() THEN excluded.done ELSE s.done + excluded.done END,"
    " started_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.started_at END"
    " RETURNING s.done"
)
_CHORD_SIZE = (
    # group id, group id, size, seconds to keep: a re-sent chord is a new run
    "WITH gone AS (DELETE FROM celeriac_chord_parts WHERE group_id = %s)"
    " INSERT INTO celeriac_chords AS c (group_id, size, done, expires_at)"
    f" VALUES (%s, %s, 0, {_EXPIRES}) ON CONFLICT (group_id) DO UPDATE"
    " SET size = excluded.size, done = 0, token = NULL, lease_until = NULL,"
    " expires_at = excluded.expires_at"
)
_CLAIMABLE = (
    f"c.token IS DISTINCT FROM '{_DONE}' AND (c.token IS NULL OR c.lease_until <= now())"
    " AND (%s OR c.done + p.n >= c.size)"
)
_PART_RETURN = (
    # group id, task id, position, value, seconds to keep, failed, token, claim
    # seconds, failed, group id, token
    "WITH chord AS (SELECT group_id FROM celeriac_chords"
    f" WHERE group_id = %s AND {_LIVE} AND token IS DISTINCT FROM '{_DONE}'),"
    " part AS (INSERT INTO celeriac_chord_parts (group_id, task_id, position, value)"
    " SELECT group_id, %s, %s, %s FROM chord ON CONFLICT DO NOTHING RETURNING 1)"
    f" UPDATE celeriac_chords c SET done = c.done + p.n, expires_at = {_EXPIRES},"
    f" token = CASE WHEN {_CLAIMABLE} THEN %s ELSE c.token END,"
    f" lease_until = CASE WHEN {_CLAIMABLE}"
    " THEN now() + make_interval(secs => %s::float8) ELSE c.lease_until END"
    f" FROM (SELECT count(*)::integer AS n FROM part) p WHERE c.group_id = %s AND {_LIVE}"
    " RETURNING c.token = %s"
)
_CHORD_PARTS = (
    "SELECT task_id, value FROM celeriac_chord_parts WHERE group_id = %s"
    " ORDER BY position NULLS LAST, task_id"
)
_HOLD = (
    "UPDATE celeriac_chords SET lease_until = now() + make_interval(secs => %s::float8)"
    " WHERE group_id = %s AND token = %s RETURNING 1"
)
_RELEASE = (
    "WITH gone AS (DELETE FROM celeriac_chord_parts WHERE group_id = %s)"
    f" UPDATE celeriac_chords SET token = '{_DONE}', lease_until = NULL"
    " WHERE group_id = %s AND token = %s"
)
_PURGE = (
    "WITH results AS (DELETE FROM celeriac_results WHERE expires_at <= now()),"
    " sets AS (DELETE FROM celeriac_result_sets WHERE expires_at <= now())"
    " DELETE FROM celeriac_chords WHERE expires_at <= now()"
)


def channel_for(url: str) -> str:
    """The NOTIFY channel of the results in ``url``'s schema (channels are per database,
    names at most 63 bytes, so the schema is hashed)."""
    _, schema = split_schema(url)
    return "celeriac_results_" + hashlib.sha256(schema.encode()).hexdigest()[:16]


class PostgresBackend(ResultBackend):
    """Results in PostgreSQL, shared by every process that reaches the database."""

    scheme = "postgresql"
    purge_interval: float = 60.0
    """Seconds between two purges of expired rows by this store object."""

    def __init__(self, url: str, options: BackendOptions | None = None):
        super().__init__(url, options)
        self.storage = storage_name(url)
        self._channel = channel_for(url)
        self._pool: AsyncConnectionPool | None = None
        self._purger: asyncio.Task[None] | None = None
        self._listener = ResultListener(url, self._channel)

    async def connect(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await open_pool(self.url)
        except BrokerUnavailable as exc:
            raise BackendError(f"result store: {exc}") from exc
        self._pool = pool
        async with self._errors():
            await ensure_schema(self.url, pool)
        self._purger = asyncio.create_task(self._purge_every())

    async def close(self) -> None:
        purger, self._purger = self._purger, None
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
        await self._listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def purge(self) -> None:
        """Delete the expired rows now (the purge task calls it every ``purge_interval``)."""
        await self._execute(_PURGE, ())

    async def _purge_every(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval)
            with contextlib.suppress(BackendError):  # a later round tries again
                await self.purge()

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise BackendError(
                f"result store {redact_url(self.url)} failed: {exc}; "
                "check the server and that the URL's user may write its schema"
            ) from exc

    async def _execute(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection (one round trip); its rows, if any."""
        if self._pool is None:
            raise BackendError(f"result store {self!r} is not connected; call connect() first")
        async with self._errors(), self._pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall() if cursor.description is not None else []

    async def _get(self, key: str) -> bytes | None:
        rows = await self._execute(_SELECT, (key,))
        return bytes(rows[0][0]) if rows else None

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultMeta | None]:
        """One query for all of them."""
        keys = [self.key_for(task_id) for task_id in task_ids]
        found = {key: bytes(value) for key, value in await self._execute(_SELECT_MANY, (keys,))}
        return [self._decode(i, found.get(k)) for i, k in zip(task_ids, keys, strict=True)]

    async def _set(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> None:
        row = (key, value, expires, fence, self._channel, payload(key, value))
        await self._execute(_UPSERT, row)

    def _set_writes(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> list[StorageWrite]:
        row = (key, value, expires, fence, self._channel, payload(key, value))
        return [StorageWrite(_UPSERT, [row])]

    async def _set_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        rows = [
            (key, value, expires, None, self._channel, payload(key, value)) for key, value in items
        ]
        await self._execute_many(_UPSERT, rows)

    async def _execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """``executemany`` in one transaction (psycopg pipelines it)."""
        if self._pool is None:
            raise BackendError(f"result store {self!r} is not connected; call connect() first")
        async with self._errors(), self._pool.connection() as conn, conn.transaction():
            await conn.cursor().executemany(statement, rows)

    async def _delete(self, key: str) -> None:
        await self._execute(_DELETE, (key,))

    async def _add_member(self, key: str, member: str, expires: float | None) -> int:
        rows = await self._execute(_ADD_MEMBER, (key, member, key, expires))
        return int(rows[0][0])

    async def _add(self, key: str, value: bytes, expires: float | None) -> bool:
        return bool(await self._execute(_ADD, (key, value, expires)))

    async def _add_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        await self._execute_many(_ADD, items)

    def _add_writes(self, items: Sequence[tuple[str, bytes, float | None]]) -> list[StorageWrite]:
        """One row: ``_ADD`` (a publish fuses it with its message). More: one statement
        over arrays (a batch's markers cost the server one statement, not one each);
        a key twice in the batch keeps its first value, as one ``_ADD`` each would."""
        if len(items) == 1:
            return [StorageWrite(_ADD, list(items))]
        first = {key: (value, expires) for key, value, expires in reversed(items)}
        keys = list(first)
        return [
            StorageWrite(
                _ADD_ROWS,
                [(keys, [first[k][0] for k in keys], [first[k][1] for k in keys])],
            )
        ]

    async def set_chord_size(self, group_id: str, size: int) -> None:
        await self._execute(_CHORD_SIZE, (group_id, group_id, size, self.options.expires))

    async def chord_part_return(
        self, group_id: str, group_index: int | None, meta: ResultMeta
    ) -> ChordJoin | None:
        """One statement records the part and claims the chord for the call that
        completed it (or, at once, for a failure); a chord whose size was never set
        (or expired) is counted as the base class does, to its saved group."""
        token, failed = uuid.uuid4().hex, meta.status != states.SUCCESS
        params = (
            group_id,
            meta.task_id,
            group_index,
            self._encode(meta),
            self.options.expires,
            failed,
            token,
            failed,
            CLAIM_SECONDS,
            group_id,
            token,
        )
        rows = await self._execute(_PART_RETURN, params)
        if not rows:
            return await super().chord_part_return(group_id, group_index, meta)
        if not rows[0][0]:
            return None
        if failed:
            return ChordJoin.of(group_id, [(meta.task_id, meta)], token)
        parts = await self._execute(_CHORD_PARTS, (group_id,))
        joined = [(str(task_id), self._decode(task_id, bytes(raw))) for task_id, raw in parts]
        return ChordJoin.of(group_id, joined, token)

    async def hold_chord(self, join: ChordJoin) -> bool:
        if not join.token:  # claimed the base class's way: a claim that never lapses
            return True
        return bool(await self._execute(_HOLD, (SEND_SECONDS, join.group_id, join.token)))

    async def release_chord(self, join: ChordJoin) -> None:
        if join.token:
            await self._execute(_RELEASE, (join.group_id, join.group_id, join.token))

    async def _wait_changed(
        self, key: str, seen: bytes | None, timeout: float | None, poll: float
    ) -> Changed | None:
        """Sleep until a notification of ``key`` (see the module docstring); poll
        while there is no listening connection."""
        waiter = await self._listener.join(key)
        if waiter is None:
            await asyncio.sleep(poll)
            return None
        try:
            now = await self._get(key)
            if now != seen:  # committed between the base class's read and the join
                return Changed(now)
            async with asyncio.timeout(RECHECK if timeout is None else min(timeout, RECHECK)):
                notified = await waiter
            if notified is not None:  # the value came with the notification: no read
                return Changed(notified)
        except TimeoutError:
            pass
        finally:
            self._listener.leave(key, waiter)
        return None
