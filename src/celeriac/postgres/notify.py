"""Wake-ups for idle consumers: PostgreSQL's LISTEN/NOTIFY, with a poll only as a fallback.

A publish runs ``SELECT pg_notify(channel, '')`` (``channel_for`` names the
channel) in its own transaction: PostgreSQL delivers it at commit, to every session listening on
the channel, so no wake-up can come before the rows are visible and none is
lost between a commit and its notification. Channels are named by a hash of
the schema and the queue (``celeriac_`` plus 32 hex digits), so any queue name
fits PostgreSQL's 63-byte identifiers and two apps in one database (two
schemas) do not wake each other.

Each broker object keeps one ``Listener``: one connection of its own that
LISTENs on the channels of its consumers' queues and counts notifications
per channel. A consumer notes the counts before it looks at the table and,
having found nothing, waits for them to move. While the connection is down
(the server restarted, an administrator ended the session) the listener says
so (``healthy``) and reconnects; consumers then look every ``poll_interval``
instead, and every count moves once it is back, since notifications were
missed meanwhile. A connection that died silently (no reset from the network)
is caught by ``SAFETY_LOOK``, the longest an idle consumer waits without a
look.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .connection import connect
from .url import split_schema

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["SAFETY_LOOK", "Listener", "channel_for"]

logger = logging.getLogger("celeriac.broker")

SAFETY_LOOK = 30.0
"""Seconds an idle consumer waits at most between looks while its listener seems healthy."""
RECONNECT_DELAYS = (0.05, 0.2, 1.0)
"""Waits before each try to reconnect the listener; the last repeats."""


def channel_for(url: str, queue: str) -> str:
    """The NOTIFY channel of ``queue`` in the schema ``url`` names."""
    _, schema = split_schema(url)
    digest = hashlib.blake2b(f"{schema}\0{queue}".encode(), digest_size=16).hexdigest()
    return f"celeriac_{digest}"


class Listener:
    """One LISTEN connection for one broker object, shared by its consumers."""

    def __init__(self, url: str, connect_timeout: float):
        self.url = url
        self._connect_timeout = connect_timeout
        self._channels: set[str] = set()
        self._counts: dict[str, int] = {}
        self._conn: AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        """Reads notifications, or (while the connection is down) reconnects."""
        self._recovery: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self.healthy = False
        """True while notifications arrive; False: consumers must poll."""
        self.reconnects = 0

    def counts(self, channels: Iterable[str]) -> tuple[int, ...]:
        """Notifications seen so far on ``channels`` (compare with a later call)."""
        return tuple(self._counts.get(c, 0) for c in channels)

    async def listen(self, channels: Iterable[str]) -> None:
        """LISTEN on ``channels`` too; returns once PostgreSQL listens (or, if it cannot
        be reached, with ``healthy`` False and a reconnect under way)."""
        wanted = set(channels) - self._channels
        if not wanted and self._reader is not None:
            return
        async with self._lock:
            self._channels |= wanted
            await self._stop_reader()
            try:
                if self._conn is None:
                    self._conn = await connect(self.url, timeout=self._connect_timeout)
                    wanted = set(self._channels)
                await self._listen_on(self._conn, wanted)
            except Exception as exc:
                await self._lost(exc)
                return
            self._heard_again(self._conn)

    async def wait(self, channels: Iterable[str], seen: tuple[int, ...], timeout: float) -> None:
        """Return once a notification on ``channels`` came after ``seen`` (``counts``),
        the listener's health changed, or ``timeout`` seconds passed."""
        channels = tuple(channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        healthy = self.healthy
        while self.counts(channels) == seen and self.healthy == healthy and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def close(self) -> None:
        self._closed = True
        self._wake()
        async with self._lock:
            await self._stop_reader()
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen_on(self, conn: AsyncConnection[Any], channels: Iterable[str]) -> None:
        from psycopg import sql

        for channel in sorted(channels):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    async def _read(self, conn: AsyncConnection[Any]) -> None:
        error: BaseException = ConnectionError("the server ended the session")
        try:
            async for note in conn.notifies():
                self._counts[note.channel] = self._counts.get(note.channel, 0) + 1
                self._wake()
        except Exception as exc:
            error = exc
        if not self._closed:  # held, so the task is not collected while it runs
            self._recovery = asyncio.get_running_loop().create_task(self._reconnect(error))

    async def _reconnect(self, exc: BaseException) -> None:
        async with self._lock:
            self._reader = None
            await self._lost(exc)

    async def _lost(self, exc: BaseException) -> None:
        """Mark the listener down (consumers poll), then reconnect until it listens again."""
        self.healthy = False
        self._wake()
        logger.warning("LISTEN connection to %s lost (%s); polling until it is back", self, exc)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._come_back())

    async def _come_back(self) -> None:
        for attempt in itertools.count():
            if self._closed:
                return
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            try:
                conn = await connect(self.url, timeout=self._connect_timeout)
                await self._listen_on(conn, self._channels)
            except Exception:
                continue
            self._conn = conn
            self.reconnects += 1
            self._heard_again(conn)
            return

    def _heard_again(self, conn: AsyncConnection[Any]) -> None:
        """Read notifications on ``conn`` from now on. Any sent while nobody read (the
        connection was down, or between stopping the reader and a new LISTEN) are
        lost, so every count moves: each waiter looks once."""
        self._conn = conn
        self.healthy = True
        for channel in self._channels:
            self._counts[channel] = self._counts.get(channel, 0) + 1
        self._wake()
        self._reader = asyncio.get_running_loop().create_task(self._read(conn))

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        from ..url_schemes import redact_url

        return f"<Listener {redact_url(self.url)}>"
