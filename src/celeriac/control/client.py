"""``app.control`` and ``app.control.inspect()``: Celery's remote-control client.

The methods, arguments and return shapes are ``celery.app.control``'s:
``broadcast(..., reply=True)`` returns a list of ``{hostname: answer}``,
``inspect().<method>()`` one dict ``{hostname: answer}`` (None when no node
answered in time). ``revoke`` also keeps the ids in the broker's storage
until ``worker_revoke_expires`` seconds from now, so workers that start
later, and every process of every worker, honour it (Celery keeps revokes
only in the memory of the workers listening when it was sent).

Each sync method runs its async twin (``a``-prefixed) through the sync facade.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._sync import run_sync
from .mailbox import Reply, addressed_to, broadcast

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["Control", "Inspect", "flatten_reply"]

"""Seconds a revoke is kept when the app has no ``worker_revoke_expires`` setting."""

Destination = str | Sequence[str] | None


def flatten_reply(replies: Iterable[Reply]) -> dict[str, Any]:
    """The replies as one ``{hostname: answer}``; a name twice is warned about, as Celery."""
    nodes: dict[str, Any] = {}
    dupes: set[str] = set()
    for item in replies:
        dupes.update(name for name in item if name in nodes)
        nodes.update(item)
    if dupes:
        warnings.warn(
            f"Received multiple replies from node name(s): {', '.join(sorted(dupes))}. "
            "Please make sure you give each node a unique nodename using the celery "
            "worker `-n` option.",
            stacklevel=3,
        )
    return nodes


def _destinations(destination: Destination) -> list[str] | None:
    if destination is None:
        return None
    return [destination] if isinstance(destination, str) else list(destination)


class Control:
    """The remote-control client of one app (``app.control``)."""

    def __init__(self, app: Celeriac):
        self.app = app

    def inspect(
        self,
        destination: Destination = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], object] | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        return Inspect(self, destination, timeout, callback, limit, pattern, matcher)

    # -- the one way a command goes out ---------------------------------------
    async def abroadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[Reply], object] | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
        connection: object = None,
        channel: object = None,
        **extra: Any,
    ) -> list[Reply] | None:
        """Send ``command`` to the workers (``destination`` names, ``pattern``+``matcher``
        selects, neither: all); with ``reply``, their replies as a list. ``connection``
        and ``channel`` (kombu's) are accepted and ignored: the app's broker carries it;
        any other keyword is one more argument of the command, as in Celery."""
        broker = await self.app.abroker()
        return await broadcast(
            broker.operations(),
            command,
            dict(arguments or {}, **extra),
            destination=_destinations(destination),
            reply=reply,
            timeout=timeout,
            limit=limit,
            callback=callback,
            pattern=pattern if pattern and matcher else None,
            matcher=matcher if pattern and matcher else None,
        )

    def broadcast(
        self, command: str, arguments: Mapping[str, Any] | None = None, **options: Any
    ) -> list[Reply] | None:
        return run_sync(lambda: self.abroadcast(command, arguments, **options))

    # -- commands ---------------------------------------------------------------
    async def aping(
        self, destination: Destination = None, timeout: float = 1.0, **options: Any
    ) -> list[Reply] | None:
        return await self.abroadcast(
            "ping", {}, destination=destination, reply=True, timeout=timeout, **options
        )

    def ping(
        self, destination: Destination = None, timeout: float = 1.0, **options: Any
    ) -> list[Reply] | None:
        return run_sync(lambda: self.aping(destination, timeout, **options))

    async def arevoke(
        self,
        task_id: str | Sequence[str],
        destination: Destination = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        **options: Any,
    ) -> list[Reply] | None:
        """Revoke the task(s): kept in the broker first, then broadcast (``terminate``
        also stops them where they run, with ``signal``)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        expires = float(self.app.conf.worker_revoke_expires)
        until = time.time() + expires
        broker = await self.app.abroker()
        await broker.operations().store_revoked(dict.fromkeys(ids, until))
        arguments = {"task_id": task_id, "terminate": terminate, "signal": signal}
        return await self.abroadcast("revoke", arguments, destination=destination, **options)

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Destination = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        **options: Any,
    ) -> list[Reply] | None:
        return run_sync(lambda: self.arevoke(task_id, destination, terminate, signal, **options))

    def terminate(
        self,
        task_id: str | Sequence[str],
        destination: Destination = None,
        signal: str = "SIGTERM",
        **options: Any,
    ) -> list[Reply] | None:
        return self.revoke(task_id, destination, terminate=True, signal=signal, **options)

    def revoke_by_stamped_headers(
        self,
        headers: Mapping[str, Any],
        destination: Destination = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        **options: Any,
    ) -> list[Reply] | None:
        arguments = {"headers": dict(headers), "terminate": terminate, "signal": signal}
        return self.broadcast(
            "revoke_by_stamped_headers", arguments, destination=destination, **options
        )

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Destination = None,
        **options: Any,
    ) -> list[Reply] | None:
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination=destination, **options)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Destination = None,
        **options: Any,
    ) -> list[Reply] | None:
        arguments = {"task_name": task_name, "hard": hard, "soft": soft}
        return self.broadcast("time_limit", arguments, destination=destination, **options)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: Mapping[str, Any] | None = None,
        destination: Destination = None,
        **kwargs: Any,
    ) -> list[Reply] | None:
        arguments = {
            "queue": queue,
            "exchange": exchange,
            "exchange_type": exchange_type,
            "routing_key": routing_key,
            **(options or {}),
        }
        return self.broadcast("add_consumer", arguments, destination=destination, **kwargs)

    def cancel_consumer(
        self, queue: str, destination: Destination = None, **options: Any
    ) -> list[Reply] | None:
        return self.broadcast(
            "cancel_consumer", {"queue": queue}, destination=destination, **options
        )

    def pool_grow(
        self, n: int = 1, destination: Destination = None, **options: Any
    ) -> list[Reply] | None:
        return self.broadcast("pool_grow", {"n": n}, destination=destination, **options)

    def pool_shrink(
        self, n: int = 1, destination: Destination = None, **options: Any
    ) -> list[Reply] | None:
        return self.broadcast("pool_shrink", {"n": n}, destination=destination, **options)

    def autoscale(
        self, max: int, min: int, destination: Destination = None, **options: Any
    ) -> list[Reply] | None:
        return self.broadcast(
            "autoscale", {"max": max, "min": min}, destination=destination, **options
        )

    def shutdown(self, destination: Destination = None, **options: Any) -> list[Reply] | None:
        return self.broadcast("shutdown", {}, destination=destination, **options)

    def enable_events(self, destination: Destination = None, **options: Any) -> list[Reply] | None:
        """Workers send task events from now on (as ``-E``)."""
        return self.broadcast("enable_events", {}, destination=destination, **options)

    def disable_events(self, destination: Destination = None, **options: Any) -> list[Reply] | None:
        return self.broadcast("disable_events", {}, destination=destination, **options)

    def heartbeat(self, destination: Destination = None, **options: Any) -> list[Reply] | None:
        """Workers send a worker-heartbeat now."""
        return self.broadcast("heartbeat", {}, destination=destination, **options)


class Inspect:
    """Questions to the workers (``app.control.inspect()``); each answer is
    ``{hostname: answer}``, or None when no node answered within ``timeout``."""

    def __init__(
        self,
        control: Control,
        destination: Destination = None,
        timeout: float = 1.0,
        callback: Callable[[Reply], object] | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ):
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    async def arequest(self, command: str, **arguments: Any) -> Any:
        """Ask ``command`` and gather the answers (Celery's ``Inspect._request``)."""
        replies = await self.control.abroadcast(
            command,
            arguments,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
            callback=self.callback,
            pattern=self.pattern,
            matcher=self.matcher,
        )
        if not replies:
            return None
        by_node = flatten_reply(replies)
        if isinstance(self.destination, str):
            return by_node.get(self.destination)
        if self.pattern:
            hosts = {"pattern": self.pattern, "matcher": self.matcher}
            return {node: answer for node, answer in by_node.items() if addressed_to(node, hosts)}
        return by_node

    def _request(self, command: str, **arguments: Any) -> Any:
        return run_sync(lambda: self.arequest(command, **arguments))

    async def aping(self, destination: Destination = None) -> Any:
        if destination:
            self.destination = destination
        return await self.arequest("ping")

    def ping(self, destination: Destination = None) -> Any:
        return run_sync(lambda: self.aping(destination))

    def stats(self) -> Any:
        return self._request("stats")

    def active(self, safe: bool | None = None) -> Any:
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> Any:
        return self._request("reserved")

    def scheduled(self, safe: bool | None = None) -> Any:
        return self._request("scheduled")

    def revoked(self) -> Any:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> Any:
        return self._request("registered", taskinfoitems=taskinfoitems)

    registered_tasks = registered

    def query_task(self, *ids: str | Sequence[str]) -> Any:
        flat = ids[0] if len(ids) == 1 and isinstance(ids[0], list | tuple) else ids
        return self._request("query_task", ids=list(flat))

    def active_queues(self) -> Any:
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> Any:
        return self._request("conf", with_defaults=with_defaults)
