"""kombu's pidbox, both ends, over a broker's operations plane.

A command is ``{"method", "arguments", "destination", "pattern", "matcher"}``
(plus ``"ticket"`` and ``"reply_to"`` when replies are wanted), sent with the
headers ``{"clock", "expires"}`` to every node; each node decides from
``destination`` or ``pattern``/``matcher`` whether it is meant
(:func:`addressed_to`). Replies are ``{hostname: answer}`` with the headers
``{"ticket", "clock"}``; the sender keeps those with its own ticket. These are
``kombu.pidbox.Mailbox._publish``, ``._broadcast``, ``._collect`` and
``kombu.pidbox.Node.handle_message``, so Celery's clients and workers meet celeriac's.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..brokers.operations import REPLY_EXCHANGE, Operations, Received

__all__ = ["Reply", "addressed_to", "broadcast", "clock", "expired"]

Reply = dict[str, Any]
"""One node's reply: ``{hostname: answer}``."""

_clock = itertools.count(1)


def clock() -> int:
    """This process's next Lamport clock value (kombu sends one with every command)."""
    return next(_clock)


def addressed_to(hostname: str, command: Mapping[str, Any]) -> bool:
    """Whether ``command`` is meant for ``hostname`` (``kombu.pidbox.Node.handle_message``):
    named in ``destination``; else matching ``pattern`` by ``matcher`` (``glob``, the
    default, or ``pcre``); else, with neither, every node is."""
    destination = command.get("destination")
    pattern, matcher = command.get("pattern"), command.get("matcher")
    if destination:
        return hostname in destination
    if pattern and matcher:
        if matcher == "pcre":
            return re.match(str(pattern), hostname) is not None
        return fnmatch.fnmatch(hostname, str(pattern))
    return True


def expired(headers: Mapping[str, Any], now: float | None = None) -> bool:
    """A command (or reply) whose ``expires`` header has passed; 0 or none: never."""
    expires = headers.get("expires")
    return isinstance(expires, int | float) and expires > 0 and (now or time.time()) > expires


async def broadcast(
    operations: Operations,
    method: str,
    arguments: Mapping[str, Any],
    *,
    destination: Sequence[str] | None = None,
    reply: bool = False,
    timeout: float = 1.0,
    limit: int | None = None,
    callback: Callable[[Reply], object] | None = None,
    pattern: str | None = None,
    matcher: str | None = None,
) -> list[Reply] | None:
    """Send one command; with ``reply``, the replies that came in time (kombu's rules:
    stop at ``limit`` replies, by default as many as ``destination`` names, or when
    none comes for ``timeout`` seconds). Without ``reply``, None."""
    if destination is not None and not isinstance(destination, list | tuple):
        raise ValueError(f"destination must be a list/tuple not {type(destination)}")
    command: dict[str, Any] = {
        "method": method,
        "arguments": dict(arguments),
        "destination": list(destination) if destination is not None else None,
        "pattern": pattern,
        "matcher": matcher,
    }
    headers = {"clock": clock(), "expires": time.time() + timeout if timeout else 0}
    if not reply:
        await operations.send_command(command, headers)
        return None
    if limit is None and destination:
        limit = len(destination)
    ticket, routing_key = str(uuid.uuid4()), str(uuid.uuid4())
    command["ticket"] = ticket
    command["reply_to"] = {"exchange": REPLY_EXCHANGE, "routing_key": routing_key}
    async with await operations.subscribe_replies(routing_key) as replies:
        await operations.send_command(command, headers)
        return await _collect(replies.get, ticket, limit, timeout, callback)


async def _collect(
    get: Callable[[float], Any],
    ticket: str,
    limit: int | None,
    timeout: float,
    callback: Callable[[Reply], object] | None,
) -> list[Reply]:
    collected: list[Reply] = []
    while limit is None or len(collected) < limit:
        received: Received | None = await get(timeout)
        if received is None:
            break
        if expired(received.headers) or received.headers.get("ticket", ticket) != ticket:
            continue
        if callback is not None:
            callback(received.body)
        collected.append(received.body)
    return collected
