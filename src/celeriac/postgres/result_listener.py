"""The result store's wake-ups: one ``LISTEN`` connection per store object, whose
notifications (payload: a result's key) resolve the futures of its waiters.

When the connection is lost every waiter is woken (it reads again, then polls)
and a new one is tried at most every ``RELISTEN`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import BrokerUnavailable
from .connection import connect

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["PAYLOAD_VALUE_LIMIT", "RELISTEN", "ResultListener", "payload"]

RELISTEN = 1.0
"""Least time between two attempts to open the listening connection."""
PAYLOAD_VALUE_LIMIT = 6000
"""Bytes of a stored value a notification carries (PostgreSQL's payloads stop at 8000)."""


def payload(key: str, value: bytes) -> str:
    """A stored result's notification: its key, then (when the value is ASCII without NUL,
    at most ``PAYLOAD_VALUE_LIMIT`` bytes, as most JSON results are) a newline and the
    value, so a waiter has the result without reading it again. ASCII, because a payload
    is text in the database's encoding, which need not be UTF-8; the value is the one the
    statement stored, since the notification is sent only for a row the fence let through."""
    if len(value) <= PAYLOAD_VALUE_LIMIT and value.isascii() and b"\0" not in value:
        return f"{key}\n{value.decode()}"
    return key


class ResultListener:
    """One ``LISTEN`` connection, shared by every waiter of a store object."""

    def __init__(self, url: str, channel: str):
        self._url = url
        self._channel = channel
        self._conn: AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._retry_at = 0.0
        self._waiters: dict[str, set[asyncio.Future[bytes | None]]] = {}

    async def join(self, key: str) -> asyncio.Future[bytes | None] | None:
        """A future a notification of ``key`` resolves; None while no connection listens."""
        if self._conn is None and not await self._open():
            return None
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, set()).add(future)
        return future

    def leave(self, key: str, future: asyncio.Future[bytes | None]) -> None:
        waiting = self._waiters.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiters[key]

    async def _open(self) -> bool:
        async with self._opening:
            if self._conn is not None:
                return True
            if time.monotonic() < self._retry_at:
                return False
            try:
                conn = await connect(self._url)
                await conn.execute(f'LISTEN "{self._channel}"')
            except (BrokerUnavailable, psycopg.Error):
                self._retry_at = time.monotonic() + RELISTEN
                return False
            self._conn = conn
            self._reader = asyncio.create_task(self._read(conn))
            return True

    async def _read(self, conn: AsyncConnection[Any]) -> None:
        try:
            async for notify in conn.notifies():
                key, carried, text = notify.payload.partition("\n")
                value = text.encode() if carried else None
                for future in self._waiters.get(key, ()):
                    if not future.done():
                        future.set_result(value)
        except psycopg.Error:
            pass  # lost: every waiter reads again, and waits poll until it is back
        self._conn = None
        self._retry_at = time.monotonic() + RELISTEN
        for waiting in self._waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_result(None)
        with contextlib.suppress(psycopg.Error):
            await conn.close()

    async def close(self) -> None:
        reader, conn = self._reader, self._conn
        self._reader = self._conn = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if conn is not None:
            await conn.close()
