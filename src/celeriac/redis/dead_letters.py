"""The dead letters of both Redis brokers: one stream per database.

Each entry has the fields ``q`` (queue), ``r`` (reason), ``c`` (delivery
count), ``t`` (UNIX time), and either the message in its broker's own fields
or ``x``: bytes that were never a message. Each broker decodes its entries
(``decode``) and requeues them its own way; listing, paging and purging are
the same for both.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

from ..brokers.base import DeadLetter

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["DeadLetterStream", "Fields"]

PAGE = 500
"""Entries read per ``XRANGE``."""

Fields = dict[bytes, bytes]


class DeadLetterStream:
    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        errors: Callable[[], AbstractContextManager[None]],
        decode: Callable[[str, Fields], DeadLetter],
    ):
        """``errors()`` maps driver errors to the broker's; ``decode(id, fields)`` reads one."""
        self.key = key
        self._client = client
        self._errors = errors
        self._decode = decode

    async def add_raw(self, queue: str, raw: bytes, reason: str, **extra: Any) -> None:
        """Bytes that are no message, kept with why (``extra``: the broker's own fields)."""
        fields = {"q": queue, **extra, "r": reason, "c": 0, "t": time.time(), "x": raw}
        with self._errors():
            await self._client.xadd(self.key, fields)  # type: ignore[arg-type]

    async def letters(self, queue: str | None, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters (of ``queue``, or of every queue)."""
        letters: list[DeadLetter] = []
        async for entry_id, fields in self._entries():
            letter = self._decode(entry_id, fields)
            if queue is None or letter.queue == queue:
                letters.append(letter)
                if len(letters) >= limit:
                    break
        return letters

    async def find(self, ids: Sequence[str]) -> list[Fields | None]:
        """The fields of each entry of ``ids`` (None: no such entry)."""
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xrange(self.key, entry_id, entry_id)
                found = await pipe.execute()
        return [entries[0][1] if entries else None for entries in found]

    async def purge(self, queue: str | None) -> int:
        """Delete the dead letters of ``queue`` (None: all); how many there were."""
        with self._errors():
            if queue is None:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.xlen(self.key)
                    pipe.delete(self.key)
                    count, _ = await pipe.execute()
                return int(count)
            wanted = queue.encode()
            ids = [i async for i, fields in self._entries() if fields.get(b"q") == wanted]
            return int(await self._client.xdel(self.key, *ids)) if ids else 0

    async def _entries(self) -> AsyncIterator[tuple[str, Fields]]:
        """Every dead letter, oldest first, read a page at a time."""
        start = "-"
        while True:
            with self._errors():
                reply = await self._client.xrange(self.key, start, "+", count=PAGE)
            page = cast(list[tuple[bytes, Fields]], reply or [])
            for entry_id, fields in page:
                yield entry_id.decode(), fields
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0].decode()
