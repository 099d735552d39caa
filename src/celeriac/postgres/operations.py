"""The PostgreSQL broker's operations plane: events, the mailbox and revokes in the database.

Tables (migration 3 in :mod:`celeriac.postgres.schema`; no schema qualifier,
``search_path`` is the URL's schema):

``celeriac_operations`` (UNLOGGED), one row per event message, mailbox command
or reply, from the send until a send ``KEEP`` seconds later prunes it (and
gone after a server crash: nobody is owed an event):

* ``id`` bigserial PRIMARY KEY: send order within a channel (see below).
* ``channel`` text: ``events``, ``mailbox`` or ``reply:<routing key>``.
* ``headers``, ``body`` bytea: JSON objects (orjson bytes, as sent).
* ``sent_at`` timestamptz, the server's ``now()``.

Indexes ``celeriac_operations_channel (channel, id)`` for the reads,
``celeriac_operations_age (sent_at)`` for the pruning.

``celeriac_revoked``, one row per revoked task id, from the revoke until a
read finds it expired: ``task_id`` text PRIMARY KEY, ``until`` double
precision (UNIX seconds; a later revoke of the id keeps the later until).

* Sending is one statement, so one round trip: take the channel's advisory
  lock, insert the rows, ``pg_notify`` the row channel's NOTIFY channel (with
  an empty payload: the subscribers read the rows; payloads are capped at 8000
  bytes), and every ``PRUNE_EVERY`` seconds delete the rows older than
  ``KEEP`` (``SKIP LOCKED``: a prune never waits). ``synchronous_commit`` is
  off for it: events need no fsync.
* **Ids commit in order within a channel.** A bigserial id is drawn when a
  row is inserted, not when it commits, so of two concurrent senders the one
  with the lower id may commit last, and a subscriber that had read past the
  higher one would skip it for good. Every send therefore holds
  PostgreSQL's pg_advisory_xact_lock (``LOCK_CLASS``, a hash of schema and channel) from before
  its first id is drawn until it has committed: the sends of one channel
  draw and commit their ids one at a time, so "``id >`` the last read" misses
  nothing (save rows pruned from a subscriber more than ``KEEP`` seconds
  behind). Sends to different channels do not wait for each other.
* Subscribing: one ``LISTEN`` connection per plane
  (:class:`celeriac.postgres.notify.Listener`, the broker's wake-ups, on a
  connection of the plane's own), opened with the first subscription, on at
  most three NOTIFY channels: events, the mailbox, and one for every reply
  address. A subscription starts after its channel's newest row, read once the
  plane listens, and reads its rows through the broker's pool when its NOTIFY
  channel moves, and every ``SAFETY_LOOK`` seconds in case a notification was
  lost. While the LISTEN connection is down, it looks every ``LOST_POLL``
  seconds; when the connection is back, once more at once.
* Revokes: one upsert (``greatest`` of the two untils); ``revoked()`` deletes
  the expired ones in the statement that reads the rest (``SKIP LOCKED``:
  workers starting at once never wait for each other's deletes).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..brokers.operations import Operations, Received, Subscription
from ..serialization import json_dumps, json_loads
from .connection import errors
from .notify import SAFETY_LOOK, Listener, channel_for

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["KEEP", "PostgresOperations"]

KEEP = 60.0
"""Seconds an event, command or reply stays in the table."""
PRUNE_EVERY = 1.0
"""Least seconds between two prunings by one plane."""
READ_BATCH = 256
"""Most rows one look reads."""
LOST_POLL = 0.5
"""Seconds between looks of an idle subscription while the LISTEN connection is lost."""
CONNECT_TIMEOUT = 5.0
"""Seconds to open the LISTEN connection."""
LOCK_CLASS = 0x0CE1
"""First key of the sends' advisory locks (the second is the channel's hash)."""
EVENTS, MAILBOX, REPLY = "events", "mailbox", "reply:"
NOTIFIED = (EVENTS, MAILBOX, REPLY)
"""The row channels, replies as one, that each have a NOTIFY channel."""
NOTIFY_PREFIX = "\0operations:"
"""Before a row channel in the name hashed into its NOTIFY channel
(``notify.channel_for``): no queue's name starts with a NUL, so no queue shares it."""

_O, _R = "celeriac_operations", "celeriac_revoked"
SEND = f"""
WITH locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(%(lock)s, hashtext(current_schema() || ':' || %(channel)s)),
           set_config('synchronous_commit', 'off', true)
), pruned AS (
    DELETE FROM {_O} WHERE id = ANY (ARRAY(
        SELECT id FROM {_O}
        WHERE %(prune)s AND sent_at < now() - make_interval(secs => %(keep)s)
        FOR UPDATE SKIP LOCKED))
), sent AS (
    INSERT INTO {_O} (channel, headers, body)
    SELECT %(channel)s, u.headers, u.body
    FROM locked, unnest(%(headers)s::bytea[], %(bodies)s::bytea[]) WITH ORDINALITY
        AS u (headers, body, n)
    ORDER BY u.n
)
SELECT count(pg_notify(%(notify)s, '')) FROM locked
"""
"""One send: lock, insert, notify and (``prune`` true) prune, in one round trip. The
insert reads ``locked``, so no id is drawn before the lock is held."""
LAST_SENT = f"SELECT coalesce(max(id), 0) FROM {_O} WHERE channel = %s"
READ_SENT = (
    f"SELECT id, headers, body FROM {_O} WHERE channel = %s AND id > %s ORDER BY id LIMIT %s"
)
REVOKE = f"""
INSERT INTO {_R} (task_id, until) SELECT * FROM unnest(%s::text[], %s::float8[])
ON CONFLICT (task_id) DO UPDATE SET until = greatest({_R}.until, excluded.until)
"""
LIST_REVOKED = f"""
WITH forgotten AS (
    DELETE FROM {_R} WHERE task_id = ANY (ARRAY(
        SELECT task_id FROM {_R} WHERE until <= %(now)s FOR UPDATE SKIP LOCKED))
)
SELECT task_id, until FROM {_R} WHERE until > %(now)s
"""


class PostgresOperations(Operations):
    """The plane of one ``PostgresBroker``; see the module docstring."""

    def __init__(self, url: str, pool: Callable[[], AsyncConnectionPool]):
        """``pool`` returns the broker's open pool (reads, sends and revokes use it)."""
        self._url = url
        self._pool = pool
        self._notify = {name: channel_for(url, NOTIFY_PREFIX + name) for name in NOTIFIED}
        self._pruned_at = 0.0
        self._open: set[_TableSubscription] = set()
        self.listener = Listener(url, CONNECT_TIMEOUT)
        """The plane's one LISTEN connection, opened with its first subscription."""

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        await self._send(EVENTS, [({"hostname": e.get("hostname")}, e) for e in events])

    async def subscribe_events(self) -> Subscription:
        return await self._subscribe(EVENTS)

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        await self._send(MAILBOX, [(headers, command)])

    async def subscribe_commands(self, hostname: str) -> Subscription:
        return await self._subscribe(MAILBOX)

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        await self._send(REPLY + str(reply_to.get("routing_key")), [(headers, reply)])

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        return await self._subscribe(REPLY + routing_key)

    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        if revoked:
            ids = sorted(revoked)  # two stores of the same ids lock them in one order
            until = [float(revoked[task_id]) for task_id in ids]
            async with errors(self._url), self._pool().connection() as conn:
                await conn.execute(REVOKE, (ids, until))

    async def revoked(self) -> dict[str, float]:
        async with errors(self._url), self._pool().connection() as conn:
            cursor = await conn.execute(LIST_REVOKED, {"now": time.time()})
            rows: list[tuple[str, float]] = await cursor.fetchall()
        return dict(rows)

    async def close(self) -> None:
        for subscription in list(self._open):
            await subscription.close()
        await self.listener.close()

    @property
    def poll_interval(self) -> float:
        """Seconds an idle subscription waits before looking anyway."""
        return SAFETY_LOOK if self.listener.healthy else LOST_POLL

    async def _send(self, channel: str, rows: Sequence[tuple[Mapping[str, Any], Any]]) -> None:
        if not rows:
            return
        now = time.monotonic()
        prune = now - self._pruned_at >= PRUNE_EVERY
        if prune:
            self._pruned_at = now
        params = {
            "lock": LOCK_CLASS,
            "channel": channel,
            "prune": prune,
            "keep": KEEP,
            "headers": [json_dumps(dict(headers)) for headers, _ in rows],
            "bodies": [json_dumps(body) for _, body in rows],
            "notify": self._notify_channel(channel),
        }
        async with errors(self._url), self._pool().connection() as conn:
            await conn.execute(SEND, params)

    async def _subscribe(self, channel: str) -> _TableSubscription:
        """A subscription to ``channel`` after its newest row, read once the plane listens
        (so whatever commits later is announced to it)."""
        wake_on = self._notify_channel(channel)
        await self.listener.listen([wake_on])
        seen = self.listener.counts([wake_on])
        async with errors(self._url), self._pool().connection() as db:
            row = await (await db.execute(LAST_SENT, (channel,))).fetchone()
        subscription = _TableSubscription(self, channel, wake_on, row[0] if row else 0, seen)
        self._open.add(subscription)
        return subscription

    def _notify_channel(self, channel: str) -> str:
        """The NOTIFY channel of a row channel: every reply address shares one, so the
        plane LISTENs on at most three channels however many replies it awaits."""
        return self._notify[REPLY if channel.startswith(REPLY) else channel]

    async def look(self, channel: str, after: int) -> list[tuple[int, Received]]:
        """Up to ``READ_BATCH`` rows of ``channel`` after the id ``after``, with their ids."""
        async with errors(self._url), self._pool().connection() as conn:
            cursor = await conn.execute(READ_SENT, (channel, after, READ_BATCH))
            rows: list[tuple[int, bytes, bytes]] = await cursor.fetchall()
        return [(i, Received(json_loads(body), json_loads(headers))) for i, headers, body in rows]

    def forget(self, subscription: _TableSubscription) -> None:
        self._open.discard(subscription)


class _TableSubscription(Subscription):
    """One channel's rows after ``last``, read when its NOTIFY channel moves or a poll is due."""

    def __init__(
        self,
        plane: PostgresOperations,
        channel: str,
        wake_on: str,
        last: int,
        seen: tuple[int, ...],
    ):
        self._plane = plane
        self.channel = channel
        self._wake_on = (wake_on,)
        self.last = last
        self._seen: tuple[int, ...] | None = seen
        """The listener's count when the last look began (None: look again at once)."""
        self._looked_at = time.monotonic()
        self._buffer: deque[Received] = deque()
        self.closed = False

    async def get(self, timeout: float) -> Received | None:
        listener = self._plane.listener
        deadline = time.monotonic() + timeout
        while not self.closed:
            if self._buffer:
                return self._buffer.popleft()
            seen = listener.counts(self._wake_on)
            due = self._looked_at + self._plane.poll_interval
            now = time.monotonic()
            if seen != self._seen or now >= due:
                await self._look(seen)
                continue
            if now >= deadline:
                return None
            await listener.wait(self._wake_on, seen, min(deadline, due) - now)
        # Closed: nothing comes any more; wait as an open one would (no busy loop).
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
        return None

    async def _look(self, seen: tuple[int, ...]) -> None:
        self._seen, self._looked_at = seen, time.monotonic()
        rows = await self._plane.look(self.channel, self.last)
        if self.closed:
            return
        if len(rows) == READ_BATCH:
            self._seen = None  # more may wait
        if rows:
            self.last = rows[-1][0]
        self._buffer.extend(received for _, received in rows)

    async def close(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._plane.forget(self)
