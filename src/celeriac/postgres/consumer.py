"""The PostgreSQL broker's consumer: leases, acks and heartbeats through the broker's pool.

A look is one transaction in one round trip (pipeline mode): the carried
writes and acks, then ``LEASE`` (rows of the consumer's queues by priority,
then the time they became visible, then id, taken with ``FOR UPDATE SKIP
LOCKED`` so concurrent consumers never wait for each other nor take a row
twice), then ``NEXT_DUE`` (how long until the earliest other row of those
queues comes due: a delayed message, or a lease that may lapse).

Having found nothing, a consumer waits on the broker's ``Listener``
(:mod:`celeriac.postgres.notify`) until a publish to one of its queues, the
next due row, or ``SAFETY_LOOK``; a later ``fetch`` that starts before any of
those does not query at all, so an idle worker costs the server nothing.
While the listener is down it looks every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..brokers.base import Consumer, Delivery, logger
from ..brokers.message_columns import decode_message, raw_bytes
from ..errors import MessageError
from ..shared_storage import StorageWrite
from .connection import make_writes, one_round_trip
from .notify import SAFETY_LOOK, Listener
from .schema import DEAD_LETTERS_TABLE as _D
from .schema import MESSAGE_COLUMNS, NOTIFY
from .schema import MESSAGES_TABLE as _M

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .broker import PostgresBroker

__all__ = ["PostgresConsumer"]

Row = tuple[Any, ...]

LEASE = (
    f"UPDATE {_M} AS m SET owner = %(owner)s, delivery_count = m.delivery_count + 1,"
    " visible_at = now() + make_interval(secs => %(lease)s)"
    " FROM (SELECT p.id, p.priority, p.visible_at FROM unnest(%(queues)s::text[]) AS q(name)"
    " CROSS JOIN LATERAL (SELECT id, priority, visible_at FROM "
    f"{_M} WHERE queue = q.name AND visible_at <= now()"
    " ORDER BY priority DESC, visible_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS p"
    " ORDER BY p.priority DESC, p.visible_at, p.id LIMIT %(limit)s) AS pick"
    " WHERE m.id = pick.id"
    " RETURNING m.id, m.queue, m.delivery_count, pick.priority, pick.visible_at,"
    " m.headers, m.properties, convert_to(m.content_type, 'UTF8'),"
    " convert_to(m.content_encoding, 'UTF8'), m.body"
)
"""One index range per queue (``celeriac_messages_fetch``), in the fetch's own order;
the text columns come back as bytes, for ``decode_message`` and ``raw_bytes``."""
NEXT_DUE = (
    "SELECT extract(epoch FROM min(n.v) - now())::float8"
    " FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN generate_series(0, 9) AS p(priority)"
    f" CROSS JOIN LATERAL (SELECT visible_at AS v FROM {_M} WHERE queue = q.name"
    " AND priority = p.priority AND owner IS DISTINCT FROM %(owner)s"
    " ORDER BY visible_at LIMIT 1) AS n"
)
"""Seconds until the earliest row of the queues not leased to this consumer comes due
(one index seek per queue and priority); NULL when there is none."""
ACK = f"DELETE FROM {_M} WHERE owner = %s AND id = ANY(%s)"
HEARTBEAT = f"UPDATE {_M} SET visible_at = now() + make_interval(secs => %s) WHERE owner = %s"
RELEASE = (
    f"UPDATE {_M} SET owner = NULL, visible_at = coalesce(to_timestamp(%s::float8), now()),"
    " delivery_count = delivery_count - %s WHERE owner = %s AND id = ANY(%s)"
)
_DEAD_LETTER = (
    f"WITH gone AS (DELETE FROM {_M} WHERE id = %(id)s AND owner = %(owner)s RETURNING *)"
    f" INSERT INTO {_D} (queue, priority, reason, delivery_count, {{columns}})"
    " SELECT queue, priority, %(reason)s, delivery_count, {values} FROM gone"
)
DEAD_LETTER = _DEAD_LETTER.format(columns=MESSAGE_COLUMNS, values=MESSAGE_COLUMNS)
DEAD_LETTER_ROW = _DEAD_LETTER.format(columns="body", values="%(raw)s")
"""A leased row that holds no message, as raw bytes."""

WITHOUT_FLUSH = "SET LOCAL synchronous_commit TO off"
"""A consumer's transactions (leases, acks with the results they carry) commit without
waiting for the disk: a server crash may undo the last moment of them, which delivers
those messages again (at least once), while each saves a task's round trip a flush.
Publishes keep waiting for theirs: ``delay()`` returns only once its message is durable."""


class PostgresConsumer(Consumer):
    """Leases rows to one owner token: the name plus a random suffix.

    The suffix keeps a restarted worker of the same name from renewing (by
    heartbeat) the leases its dead predecessor held.
    """

    def __init__(self, broker: PostgresBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._broker = broker
        self._owner = f"{name}#{secrets.token_hex(4)}"
        self._channels = broker.channels(self.queues)
        self._seen: tuple[int, ...] | None = None
        """The listener's counts before the last look that found nothing; None: look."""
        self._due = 0.0
        """Loop time the next row comes due, by the last look (inf: none)."""
        self._looked_at = 0.0
        self.looks = 0
        """Queries made to look for messages (an idle consumer makes none)."""

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """The writes, the acks and the first look in one transaction; then, while
        nothing is visible, waits for a notification or the next due row."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listener = self._broker.listener()
        await listener.listen(self._channels)
        while True:
            if acks or writes or self._stale(listener, loop.time()):
                seen = listener.counts(self._channels)
                rows = await self._look(acks, writes, limit)
                acks, writes = (), ()
                if rows:
                    self._seen = None
                    deliveries = await self._deliveries(rows)
                    if deliveries:
                        return deliveries
                    continue  # every row was garbage, now dead-lettered: look again at once
                self._seen = seen if listener.healthy else None
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                return []
            wake = min(self._due, self._looked_at + SAFETY_LOOK)
            if not listener.healthy:
                wake = min(wake, now + self.options.poll_interval)
            seen = self._seen or listener.counts(self._channels)
            await listener.wait(self._channels, seen, min(remaining, max(wake - now, 0.0)))

    def _stale(self, listener: Listener, now: float) -> bool:
        """Whether the last look's "nothing" may have changed."""
        return (
            self._seen is None
            or not listener.healthy
            or listener.counts(self._channels) != self._seen
            or now >= min(self._due, self._looked_at + SAFETY_LOOK)
        )

    async def _look(
        self, acks: Sequence[Delivery], writes: Sequence[StorageWrite], limit: int
    ) -> list[Row]:
        """Run ``_take``, shielded: if the fetch is cancelled, rows it leased go back."""
        take = asyncio.ensure_future(self._take(acks, writes, limit))
        try:
            return await asyncio.shield(take)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._release_ids(await take, None, uncount=True)
            raise

    async def _take(
        self, acks: Sequence[Delivery], writes: Sequence[StorageWrite], limit: int
    ) -> list[Row]:
        params = {
            "owner": self._owner,
            "lease": self.options.lease_timeout,
            "queues": list(self.queues),
            "limit": limit,
        }
        async with self._broker.session() as conn:
            async with one_round_trip(conn):
                await conn.execute(WITHOUT_FLUSH)
                await self._settle(conn, acks, writes)
                lease = await conn.execute(LEASE, params)
                due = await conn.cursor().execute(NEXT_DUE, params)
            rows = await lease.fetchall()
            row = await due.fetchone()
        self.looks += 1
        self._looked_at = now = asyncio.get_running_loop().time()
        seconds = None if row is None else row[0]
        # A due row may be one another fetch holds locked for a moment: not a busy loop.
        self._due = math.inf if seconds is None else now + max(seconds, self.options.poll_interval)
        return rows

    async def _settle(
        self, conn: AsyncConnection[Any], acks: Sequence[Delivery], writes: Sequence[StorageWrite]
    ) -> None:
        """A result store's writes, then the acks (inside the caller's transaction)."""
        await make_writes(conn.cursor(), writes)
        if acks:
            await conn.execute(ACK, (self._owner, [d.tag for d in acks]))

    async def _deliveries(self, rows: list[Row]) -> list[Delivery]:
        """Deliveries of leased rows in the fetch's order; rows that hold no message go
        to the dead letters (if that fails, every row goes back, uncounted)."""
        rows.sort(key=lambda r: (-r[3], r[4], r[0]))  # RETURNING keeps no order
        deliveries: list[Delivery] = []
        garbage: list[tuple[Row, str]] = []
        for row in rows:
            try:
                deliveries.append(Delivery(decode_message(row[5:]), row[1], row[2], row[0]))
            except MessageError as exc:
                garbage.append((row, f"undecodable message row: {exc}"))
        if garbage:
            try:
                async with self._broker.session() as conn, one_round_trip(conn) as cur:
                    params = [
                        {"id": r[0], "owner": self._owner, "reason": why, "raw": raw_bytes(r[5:])}
                        for r, why in garbage
                    ]
                    await cur.executemany(DEAD_LETTER_ROW, params)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._release_ids(rows, None, uncount=True)
                raise
            for row, reason in garbage:
                logger.error("dead-lettered row %d from queue %r: %s", row[0], row[1], reason)
        return deliveries

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        async with self._broker.session() as conn, one_round_trip(conn):
            await conn.execute(WITHOUT_FLUSH)
            await self._settle(conn, deliveries, writes)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        await self._release_ids([(d.tag, d.queue) for d in deliveries], not_before, uncount=uncount)

    async def _release_ids(
        self, rows: Sequence[Row], not_before: float | None, *, uncount: bool
    ) -> None:
        """Hand back rows (``(id, queue, ...)``) and wake the queues' idle consumers."""
        if not rows:
            return
        ids = [r[0] for r in rows]
        channels = sorted(set(self._broker.channels([r[1] for r in rows])))
        async with self._broker.session() as conn, one_round_trip(conn):
            await conn.execute(RELEASE, (not_before, int(uncount), self._owner, ids))
            await conn.execute(NOTIFY, (channels,))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        params = {"id": delivery.tag, "owner": self._owner, "reason": reason}
        async with self._broker.session() as conn:
            await conn.execute(DEAD_LETTER, params)

    async def _heartbeat(self) -> None:
        if not self.held:  # an idle consumer costs the server nothing
            return
        async with self._broker.session() as conn:
            await conn.execute(HEARTBEAT, (self.options.lease_timeout, self._owner))
