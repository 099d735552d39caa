"""The SQLite broker's operations plane: events, the mailbox and revokes in the broker's file.

Tables (columns and lifetimes in :mod:`celeriac.sqlite.schema`):
``celeriac_operations`` holds events, mailbox commands and replies, one row
each, on a ``channel`` (``events``, ``mailbox``, ``reply:<routing key>``);
``celeriac_revoked`` holds the revokes.

* Sending: one transaction per batch, on the plane's own connection with
  ``synchronous=NORMAL`` (monitoring never waits for an fsync; a power cut may
  lose a few events, which nobody is owed). The write runs on that
  connection's thread (:class:`celeriac.sqlite.connection.Connection`), so the
  event loop never waits for the write lock. Every ``PRUNE_EVERY`` seconds a
  send also deletes the rows older than ``KEEP`` seconds.
* Subscribing: a subscription starts after the newest row at the time it
  opens and reads its channel's rows by increasing id. AUTOINCREMENT never
  reuses an id and writers commit one at a time, so ids commit in order and
  reading after the last one read misses nothing (save what was pruned from a
  subscriber more than ``KEEP`` seconds behind). Reads run on the event loop,
  on a connection that never waits for a lock (a WAL reader needs none; when
  the file is busy anyway, the look finds nothing and comes again); the query
  is skipped while ``PRAGMA data_version`` says nobody wrote. An idle
  subscription looks again with :class:`celeriac.sqlite.polling.Backoff`
  (every 0.1-0.5 ms for 100 ms after a message, then backing off to the
  broker's ``poll_interval``) and at once when this plane sends.
* Revokes: stored through the broker's publishing connection, so a revoke is
  as durable as a publish (``synchronous=FULL``); a later ``until`` for an id
  wins; ``revoked()`` deletes the expired ones it finds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..brokers.operations import Operations, Received, Subscription
from ..errors import BrokerError
from ..serialization import json_dumps, json_loads
from ..url_schemes import redact_url
from .busy import is_busy
from .connection import Connection, broker_connection, open_fast, transaction
from .consumer import Doorbell
from .polling import Backoff
from .schema import (
    FORGET_REVOKED,
    LAST_SENT,
    LIST_REVOKED,
    PRUNE_SENT,
    READ_SENT,
    REVOKE,
    SEND,
)

__all__ = ["KEEP", "SQLiteOperations"]

KEEP = 60.0
"""Seconds an event, command or reply stays in the table."""
PRUNE_EVERY = 1.0
"""Least seconds between two prunings by one plane."""
READ_BATCH = 256
"""Most rows one look reads."""
EVENTS, MAILBOX, REPLY = "events", "mailbox", "reply:"

_Row = tuple[str, Mapping[str, Any], Mapping[str, Any]]
"""A row to send: channel, headers, body."""


class SQLiteOperations(Operations):
    """The plane of one ``SQLiteBroker``; see the module docstring."""

    def __init__(self, url: str, writer: Callable[[], Connection], poll_interval: float):
        """``writer`` returns the broker's publishing connection (revokes go through it)."""
        self._url = url
        self._writer = writer
        self._poll_interval = poll_interval
        self._conn = broker_connection(url, "NORMAL")
        self._reader: sqlite3.Connection | None = None
        self._doorbell = Doorbell()
        self._pruned_at = 0.0
        self._open: set[_TableSubscription] = set()

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        await self._send([(EVENTS, {"hostname": e.get("hostname")}, e) for e in events])

    async def subscribe_events(self) -> Subscription:
        return await self._subscribe(EVENTS)

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        await self._send([(MAILBOX, headers, command)])

    async def subscribe_commands(self, hostname: str) -> Subscription:
        return await self._subscribe(MAILBOX)

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        await self._send([(REPLY + str(reply_to.get("routing_key")), headers, reply)])

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        return await self._subscribe(REPLY + routing_key)

    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        rows = [(task_id, float(until)) for task_id, until in revoked.items()]
        if rows:
            await self._writer().run(
                lambda db: transaction(db, lambda db: db.executemany(REVOKE, rows).close())
            )

    async def revoked(self) -> dict[str, float]:
        now = time.time()

        def read(db: sqlite3.Connection) -> dict[str, float]:
            rows: list[tuple[str, float]] = db.execute(LIST_REVOKED).fetchall()
            if any(until <= now for _, until in rows):
                db.execute(FORGET_REVOKED, (now,)).close()
            return {task_id: until for task_id, until in rows if until > now}

        return await self._conn.run(read)

    async def close(self) -> None:
        for subscription in list(self._open):
            await subscription.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._conn.close()

    async def _send(self, rows: Sequence[_Row]) -> None:
        if not rows:
            return
        now = time.time()
        params = [(c, now, json_dumps(dict(h)), json_dumps(dict(b))) for c, h, b in rows]
        prune = now - self._pruned_at >= PRUNE_EVERY
        if prune:
            self._pruned_at = now

        def write(db: sqlite3.Connection) -> None:
            db.executemany(SEND, params).close()
            if prune:
                db.execute(PRUNE_SENT, (now - KEEP,)).close()

        await self._conn.run(lambda db: transaction(db, write))
        self._doorbell.ring()

    async def _subscribe(self, channel: str) -> _TableSubscription:
        """A subscription to ``channel`` after the newest row (opening the file, and
        creating the tables, on the plane's connection first)."""
        last: int = await self._conn.run(lambda db: db.execute(LAST_SENT).fetchone()[0])
        subscription = _TableSubscription(self, channel, last, self._poll_interval)
        self._open.add(subscription)
        return subscription

    def look(self, subscription: _TableSubscription) -> list[Received]:
        """The rows of ``subscription``'s channel after the last it read; on the loop."""
        try:
            db = self._reader or self._open_reader()
            (version,) = db.execute("PRAGMA data_version").fetchone()
            if version == subscription.version:
                return []
            params = (subscription.last, subscription.channel, READ_BATCH)
            rows: list[tuple[int, bytes, bytes]] = db.execute(READ_SENT, params).fetchall()
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return []  # a checkpoint or a recovery holds the file: look again later
            raise BrokerError(f"SQLite broker {redact_url(self._url)}: {exc}") from exc
        if len(rows) < READ_BATCH:  # all read: nothing new until another write
            subscription.version = version
        if rows:
            subscription.last = rows[-1][0]
        return [Received(json_loads(body), json_loads(headers)) for _, headers, body in rows]

    def _open_reader(self) -> sqlite3.Connection:
        self._reader = open_fast(self._url)
        return self._reader

    async def nap(self, seconds: float) -> None:
        """Wait up to ``seconds``; a send through this plane ends the wait early."""
        await self._doorbell.nap(seconds)

    def forget(self, subscription: _TableSubscription) -> None:
        self._open.discard(subscription)


class _TableSubscription(Subscription):
    """One channel's rows after ``last``, read by :meth:`SQLiteOperations.look`."""

    def __init__(self, plane: SQLiteOperations, channel: str, last: int, poll_interval: float):
        self._plane = plane
        self.channel = channel
        self.last = last
        self.version = -1
        """``PRAGMA data_version`` when this subscription last read everything."""
        self._buffer: deque[Received] = deque()
        self._backoff = Backoff(poll_interval)
        self.closed = False

    async def get(self, timeout: float) -> Received | None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            if self._buffer:
                return self._buffer.popleft()
            self._buffer.extend(self._plane.look(self))
            if self._buffer:
                self._backoff.reset()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self._plane.nap(min(self._backoff.next(), left))
        # Closed: nothing comes any more; wait as an open one would (no busy loop).
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
        return None

    async def close(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._plane.forget(self)
