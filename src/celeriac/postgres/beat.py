"""The PostgreSQL broker's beat store: the leader lease and last runs in the database.

Tables (migration 3 in :mod:`celeriac.postgres.schema`):

``celeriac_beat_lease``, one row (``lease`` = ``beat``), from the first claim
on for as long as the schema (a release or a lapse only moves ``expires_at``):

* ``lease`` text PRIMARY KEY; ``holder`` text, the last holder's name.
* ``token`` bigint: the fencing token, one more for every new holding.
* ``expires_at`` timestamptz: the holding ends then (the release's time after
  a release), by the server's clock.
* ``idle_since`` timestamptz NULL: the previous holding's ``expires_at`` as
  the claim that began the current holding found it; NULL after a renewal
  (what ``Lease.idle_since`` reports).

``celeriac_beat_runs``, one row per periodic entry ever recorded: ``entry``
text PRIMARY KEY, ``tick`` double precision (UNIX seconds of the last tick
sent; only ever moves later).

* Clock: the server's, one clock for every host, so beats on machines whose
  clocks disagree still agree on when a lease lapsed. Each statement reads it
  once (statement_timestamp()): a claim that waited for another's row lock
  judges by the time it began, which can only make a lease look held longer.
* A claim is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (one round
  trip): the conflicting row is locked before the ``WHERE`` is checked, so of
  any number of processes claiming at once exactly one finds the lease free;
  the others' statement changes no row and returns none.
* ``record_writes`` is one upsert per entry (``executemany``) that stores
  nothing unless the lease row still carries the writer's token, and moves a
  tick only forward; the broker runs it in a publish's transaction, so the
  ticks' messages and their record commit together. ``record`` runs the same
  writes in a transaction of its own after reading the token ``FOR SHARE``
  (a claim cannot change it before the commit), to say whether it was fenced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..brokers.beat_store import BeatStore, Lease
from ..shared_storage import StorageWrite
from .connection import errors, make_writes

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresBeatStore"]

_L, _R = "celeriac_beat_lease", "celeriac_beat_runs"
CLAIM = f"""
INSERT INTO {_L} AS l (lease, holder, token, expires_at)
VALUES ('beat', %(holder)s, 1, statement_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (lease) DO UPDATE SET
    holder = excluded.holder,
    token = CASE WHEN l.expires_at > statement_timestamp() THEN l.token ELSE l.token + 1 END,
    idle_since = CASE WHEN l.expires_at > statement_timestamp() THEN NULL ELSE l.expires_at END,
    expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at <= statement_timestamp()
RETURNING token, extract(epoch FROM idle_since)::float8
"""
"""Take the lease (free, lapsed or released) or renew it (held by ``holder``); no row
returned while another holds it. The ``SET`` list reads the row as it was."""
TOKEN = f"SELECT token FROM {_L} WHERE lease = 'beat' FOR SHARE"
RECORD_RUN = f"""
INSERT INTO {_R} AS r (entry, tick)
SELECT %s::text, %s::float8
WHERE EXISTS (SELECT 1 FROM {_L} WHERE lease = 'beat' AND token = %s::bigint)
ON CONFLICT (entry) DO UPDATE SET tick = excluded.tick WHERE r.tick < excluded.tick
"""
"""One entry's tick, each row ``(entry, tick, token)``: nothing unless ``token`` holds."""
LIST_RUNS = f"SELECT entry, tick FROM {_R}"
RELEASE = f"""
UPDATE {_L} SET expires_at = statement_timestamp()
WHERE lease = 'beat' AND token = %s AND holder = %s AND expires_at > statement_timestamp()
"""
HOLDER = f"""
SELECT holder, extract(epoch FROM expires_at)::float8 FROM {_L}
WHERE lease = 'beat' AND expires_at > statement_timestamp()
"""


class PostgresBeatStore(BeatStore):
    """The beat store of one ``PostgresBroker``; see the module docstring."""

    shares_publish = True

    def __init__(self, url: str, pool: Callable[[], AsyncConnectionPool]):
        """``pool`` returns the broker's open pool."""
        self._url = url
        self._pool = pool

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        start = time.monotonic()
        async with errors(self._url), self._pool().connection() as conn:
            cursor = await conn.execute(CLAIM, {"holder": holder, "ttl": ttl})
            row: tuple[int, float | None] | None = await cursor.fetchone()
        if row is None:
            return None
        return Lease(holder, row[0], start + ttl, row[1])

    async def last_runs(self) -> dict[str, float]:
        async with errors(self._url), self._pool().connection() as conn:
            rows: list[tuple[str, float]] = await (await conn.execute(LIST_RUNS)).fetchall()
        return dict(rows)

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        writes = self.record_writes(lease, runs)
        async with (
            errors(self._url),
            self._pool().connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            row = await (await cur.execute(TOKEN)).fetchone()
            if row is None or row[0] != lease.token:
                return False
            await make_writes(cur, writes)
        return True

    def record_writes(self, lease: Lease, runs: Mapping[str, float]) -> Sequence[StorageWrite]:
        rows = [(name, float(tick), lease.token) for name, tick in runs.items()]
        return [StorageWrite(RECORD_RUN, rows)] if rows else []

    async def release(self, lease: Lease) -> None:
        async with errors(self._url), self._pool().connection() as conn:
            await conn.execute(RELEASE, (lease.token, lease.holder))

    async def holder(self) -> tuple[str, float] | None:
        async with errors(self._url), self._pool().connection() as conn:
            row: tuple[str, float] | None = await (await conn.execute(HOLDER)).fetchone()
        return row
