"""The memory broker's operations plane: process-global, keyed by the broker's URL.

Like the memory broker's queues, every ``memory://`` broker of one URL in the
process shares it, whichever thread's loop listens. Bodies go through JSON
on the way, so what passes here would pass a networked broker too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .operations import (
    Operations,
    QueueSubscription,
    Received,
    Subscription,
)

__all__ = ["MemoryOperations", "reset_memory_operations"]


@dataclass(slots=True)
class _Plane:
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[QueueSubscription] = field(default_factory=list)
    commands: list[QueueSubscription] = field(default_factory=list)
    replies: dict[str, list[QueueSubscription]] = field(default_factory=dict)
    revoked: dict[str, float] = field(default_factory=dict)


_PLANES: dict[str, _Plane] = {}
_PLANES_LOCK = threading.Lock()


def _plane(url: str) -> _Plane:
    with _PLANES_LOCK:
        return _PLANES.setdefault(url, _Plane())


def reset_memory_operations(url: str | None = None) -> None:
    """Forget the revokes of ``url``, or of every ``memory://`` URL."""
    with _PLANES_LOCK:
        planes = list(_PLANES.values()) if url is None else [_PLANES.get(url) or _Plane()]
    for plane in planes:
        with plane.lock:
            plane.revoked.clear()


class _Listening(QueueSubscription):
    def __init__(self, plane: _Plane, listeners: list[QueueSubscription]):
        super().__init__()
        self._plane = plane
        self._listeners = listeners
        with plane.lock:
            listeners.append(self)

    async def close(self) -> None:
        await super().close()
        with self._plane.lock:
            if self in self._listeners:
                self._listeners.remove(self)


def _copy(body: Mapping[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = orjson.loads(orjson.dumps(body))
    return copied


class MemoryOperations(Operations):
    def __init__(self, url: str):
        self._plane = _plane(url)

    def _send(self, listeners: list[QueueSubscription], received: Sequence[Received]) -> None:
        with self._plane.lock:
            now = list(listeners)
        for listener in now:
            for one in received:
                listener.put(one)

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        received = [Received(_copy(e), {"hostname": e.get("hostname")}) for e in events]
        self._send(self._plane.events, received)

    async def subscribe_events(self) -> Subscription:
        return _Listening(self._plane, self._plane.events)

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        self._send(self._plane.commands, [Received(_copy(command), _copy(headers))])

    async def subscribe_commands(self, hostname: str) -> Subscription:
        return _Listening(self._plane, self._plane.commands)

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        with self._plane.lock:
            listeners = self._plane.replies.get(str(reply_to.get("routing_key")), [])
        self._send(listeners, [Received(_copy(reply), _copy(headers))])

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        with self._plane.lock:
            listeners = self._plane.replies.setdefault(routing_key, [])
        return _Listening(self._plane, listeners)

    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        with self._plane.lock:
            for task_id, until in revoked.items():
                self._plane.revoked[task_id] = max(until, self._plane.revoked.get(task_id, 0.0))

    async def revoked(self) -> dict[str, float]:
        now = time.time()
        with self._plane.lock:
            kept = {i: u for i, u in self._plane.revoked.items() if u > now}
            self._plane.revoked = kept
            return dict(kept)
