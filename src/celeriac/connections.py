"""One event loop's broker and result store, and what the pair decides once.

The app keeps a :class:`LoopConnections` per event loop (sync calls use
their thread's private loop; see ``_sync``). Each client connects the first
time it is asked for, so a caller that needs only the broker never reaches
the result store. What depends only on the pair is decided when the pair is
made, not per task: whether the store's writes can go with the broker's
(``shared``; see ``celeriac.shared_storage``) and the reply queue this
process's tasks carry (``rpc://``).
"""

from __future__ import annotations

import asyncio

from .backends.base import ResultBackend
from .brokers.base import Broker
from .shared_storage import same_storage

__all__ = ["LoopConnections"]


class LoopConnections:
    """A broker and a result store of one event loop, each connected on first use."""

    def __init__(self, broker: Broker, backend: ResultBackend, reply_queue: str | None):
        self.broker = broker
        self.backend = backend
        self.shared = same_storage(broker.storage, backend.storage)
        """Whether the broker makes the store's writes with its own."""
        self.reply_queue = reply_queue
        """The queue results come back on (``rpc://``); None with stores that are read."""
        self._connected: set[Broker | ResultBackend] = set()
        self._lock = asyncio.Lock()

    async def abroker(self) -> Broker:
        """The broker, connected."""
        if self.broker not in self._connected:
            await self._connect(self.broker)
        return self.broker

    async def abackend(self) -> ResultBackend:
        """The result store, connected."""
        if self.backend not in self._connected:
            await self._connect(self.backend)
        return self.backend

    async def _connect(self, client: Broker | ResultBackend) -> None:
        async with self._lock:
            if client not in self._connected:  # another caller may have connected it meanwhile
                await client.connect()
                self._connected.add(client)

    async def close(self) -> None:
        """Close what was connected (a later call connects it again)."""
        connected, self._connected = self._connected, set()
        for client in (self.broker, self.backend):
            if client in connected:
                await client.close()
