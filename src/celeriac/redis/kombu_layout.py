"""kombu's Redis layout: its options, key names and priority steps, as kombu 5 has them.

The options are kombu's transport options of the same names (Celery's
``broker_transport_options``), read from the broker URL's query too (which
wins), e.g. ``redis://host:6379/0?layout=kombu&visibility_timeout=600``:

* ``visibility_timeout`` (3600): seconds a delivery may stay unacked before a
  sweep puts it back in its queue. It must be the same on every Celery and
  celeriac peer of the database.
* ``priority_steps`` (``[0, 3, 6, 9]``), ``sep`` (``"\\x06\\x16"``): a message of
  priority ``p`` goes to the list of the highest step not above ``p``, named
  ``queue`` for step 0 and ``queue + sep + step`` otherwise.
* ``unacked_key``, ``unacked_index_key``, ``unacked_mutex_key``,
  ``unacked_mutex_expire`` (300), ``unacked_restore_limit`` (none): the names of
  the unacked hash, its index and the sweep's lock; the lock's lifetime; how
  many deliveries one sweep restores.
* ``unacked_restore_interval`` (10): seconds between two sweeps of a consumer
  (at most a quarter of the visibility timeout, so a short one is honoured).
* ``global_keyprefix`` (or celeriac's ``prefix``, in the URL or as a transport
  option): put before every key.

Keys (the URL's ``prefix`` / ``global_keyprefix`` before each), exactly kombu's:

``<queue>``, ``<queue>\\x06\\x16<step>``, LIST, one per priority step: kombu
    envelopes (:mod:`celeriac.redis.kombu_codec`), ``LPUSH`` in, ``RPOP`` out.
    Lifetime: from publish until a consumer takes the envelope.
``unacked``, HASH: delivery tag -> ``[envelope, exchange, routing_key]`` of every
    delivery not acked yet. Lifetime: from the take until ack, hand-back,
    dead-lettering or a restore.
``unacked_index``, ZSET: delivery tag -> UNIX time it was taken; celeriac's
    heartbeat renews the time of the deliveries its consumers hold, so a live
    celeriac worker keeps a long task (a Celery worker renews nothing).
``unacked_mutex``, STRING: the lock of one restore sweep (``kombu.transport.redis.Mutex``).
``_kombu.binding.<queue>`` and ``_kombu.binding_permanent.<queue>``, SET:
    the member ``<queue>\\x06\\x16\\x06\\x16<queue>`` a publish declares, as a Celery
    client does; kombu's restore routes by them. Lifetime: the database's.
``celeriac:kombu-dead``, STREAM (celeriac's own; kombu drops a rejected
    message): dead letters, fields ``q`` queue, ``r`` reason, ``c`` delivery
    count, ``t`` UNIX time and ``e`` the envelope, or ``x`` bytes that were never
    one. Lifetime: until requeued or purged.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError

__all__ = ["KombuLayout", "split_layout"]

DEAD_KEY = "celeriac:kombu-dead"
"""celeriac's own STREAM of dead letters (kombu has none on Redis)."""
BINDING_KEY = "_kombu.binding."
PERMANENT_BINDING_KEY = "_kombu.binding_permanent."
"""kombu 5.7's second binding table: its sweep keeps a table while this one has members."""

_NUMBERS = {
    "visibility_timeout": 3600.0,
    "unacked_mutex_expire": 300.0,
    "unacked_restore_interval": 10.0,
}
_NAMES = {
    "unacked_key": "unacked",
    "unacked_index_key": "unacked_index",
    "unacked_mutex_key": "unacked_mutex",
    "sep": "\x06\x16",
}
_OTHERS = ("priority_steps", "unacked_restore_limit", "layout")
OPTIONS = (*_NUMBERS, *_NAMES, *_OTHERS)


def split_layout(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the layout's query options, and those options."""
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in OPTIONS:
            taken[name] = value
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), taken


@dataclass(frozen=True, slots=True)
class KombuLayout:
    """Where kombu keeps what, with the prefix already in every key name."""

    prefix: str
    sep: str
    priority_steps: tuple[int, ...]
    visibility_timeout: float
    unacked: str
    unacked_index: str
    unacked_mutex: str
    mutex_expire: float
    restore_interval: float
    restore_limit: int | None

    @classmethod
    def from_options(cls, prefix: str, options: Mapping[str, Any]) -> KombuLayout:
        """The layout that ``options`` (transport options, then the URL's) describe."""
        try:
            numbers = {k: float(options.get(k, v)) for k, v in _NUMBERS.items()}
            names = {k: str(options.get(k, v)) for k, v in _NAMES.items()}
            steps = _steps(options.get("priority_steps"))
            limit = options.get("unacked_restore_limit")
            restore_limit = None if limit in (None, "", "None") else int(limit)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad kombu layout option: {exc}") from exc
        if numbers["visibility_timeout"] <= 0:
            raise ConfigurationError("visibility_timeout must be more than 0 seconds")
        return cls(
            prefix=prefix,
            sep=names["sep"],
            priority_steps=steps,
            visibility_timeout=numbers["visibility_timeout"],
            unacked=prefix + names["unacked_key"],
            unacked_index=prefix + names["unacked_index_key"],
            unacked_mutex=prefix + names["unacked_mutex_key"],
            mutex_expire=numbers["unacked_mutex_expire"],
            restore_interval=min(
                numbers["unacked_restore_interval"], numbers["visibility_timeout"] / 4
            ),
            restore_limit=restore_limit,
        )

    @property
    def dead(self) -> str:
        return self.prefix + DEAD_KEY

    def step(self, priority: int) -> int:
        """``kombu.transport.redis.Channel.priority``: the highest step not above ``priority``
        (below the lowest step: the highest, as kombu's indexing has it)."""
        steps = self.priority_steps
        return steps[bisect.bisect(steps, priority) - 1]

    def queue_key(self, queue: str, priority: int) -> str:
        """kombu's `Channel._q_for_pri`: the list a message of ``priority`` waits in."""
        step = self.step(priority)
        return f"{self.prefix}{queue}{self.sep}{step}" if step else self.prefix + queue

    def queue_keys(self, queue: str) -> list[str]:
        """Every list of ``queue``, in the order kombu's ``BRPOP`` reads them."""
        return [self.queue_key(queue, step) for step in self.priority_steps]

    def binding_key(self, exchange: str) -> str:
        return self.prefix + BINDING_KEY + exchange

    def permanent_binding_key(self, exchange: str) -> str:
        return self.prefix + PERMANENT_BINDING_KEY + exchange

    def binding(self, routing_key: str, queue: str) -> str:
        """The binding-table member kombu writes for a direct binding."""
        return self.sep.join((routing_key, "", queue))

    def bound_queues(self, members: Sequence[bytes], routing_key: str) -> list[str]:
        """The queues of a binding table that a direct exchange routes ``routing_key`` to."""
        queues = []
        for member in members:
            parts = member.decode().split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                queues.append(parts[2])
        return queues


def _steps(value: Any) -> tuple[int, ...]:
    if value is None:
        return (0, 3, 6, 9)
    if isinstance(value, str):  # from the URL: "0,3,6,9" or "[0, 3, 6, 9]"
        value = json.loads(value) if value.startswith("[") else value.split(",")
    steps = tuple(sorted(int(v) for v in value))
    if not steps:
        raise ValueError("priority_steps is empty")
    return steps
