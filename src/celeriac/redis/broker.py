"""The Redis broker (``redis://``, ``rediss://``): Streams with consumer groups.

URL: redis-py's (``redis://[:password@]host[:port][/db][?options]``, see
:mod:`celeriac.redis.url`); ``?prefix=app1:`` (or kombu's ``global_keyprefix``)
goes before every key, so several apps share one database. Needs Redis 6.2+
(or Valkey) and ``pip install 'celeriac[redis]'``.

Keys (``P`` = the prefix + ``KEY_PREFIX``; names are the ``*_KEY`` constants;
``broker.lua`` beside this module holds every script):

``P queue:<queue>:<priority>``, STREAM, one per queue and priority 0-9:
    the queue's ready messages and its delivered, unacked ones; consumer group
    ``celeriac`` (``GROUP``), created at id 0 on first fetch. Entry fields:
    ``h`` (orjson ``[headers, properties, content_type, content_encoding]``),
    ``b`` (the body bytes), ``n`` (deliveries before this entry; absent: 0).
    Lifetime: an entry lives from publish (or from its move out of the delayed
    set) until acked: the ack is ``XACK`` + ``XDEL`` in one script call, so a
    stream only ever holds unacked messages and memory stays bounded. The
    (empty) stream and its group stay, as long as the database.
``P delayed:<queue>``, ZSET: messages with a ``not_before`` in the future
    (eta, countdown, retries, requeue with a delay): member msgpack
    ``[priority, n, h, b, nonce]``, score ``not_before`` in UNIX ms. Lifetime:
    until due, then the next fetch of the queue moves it into its stream in
    the same Lua call. No worker holds it in memory meanwhile.
``P consumers:<queue>``, ZSET: consumer (``name#random``) -> lease expiry,
    UNIX ms by the server's clock. Each fetch and each heartbeat (every
    ``lease_timeout / 4``) pushes it ``lease_timeout`` ahead. Lifetime: until
    the consumer closes, or until a fetch finds it lapsed and has taken over
    everything it held in the queue.
``P dead``, STREAM: dead letters of every queue, fields ``q`` queue, ``p``
    priority, ``r`` reason, ``c`` delivery count, ``t`` UNIX time, and ``h``,
    ``b`` for a message or ``x`` for bytes that were never one. The entry id is
    the dead letter's id. Lifetime: until requeued or purged.

The operations plane's keys (``P events``, ``P revoked``) and pub/sub channels
are listed in :mod:`celeriac.redis.operations`; beat's (``P beat:lease``,
``P beat:runs``) in :mod:`celeriac.redis.beat`.

Mechanism:

* Publish is one round trip: ``XADD`` for one message; a batch (or a delayed
  message, ``ZADD``) is one Lua call, atomic, per ``PUBLISH_CHUNK`` messages.
  It returns once Redis has the messages (durable as far as the server's
  persistence settings make them).
* Fetch is one Lua call (one round trip when work is ready). It renews the
  consumer's lease, moves due delayed messages into their streams, then for
  each priority from 9 down to 0 (queues of equal priority in rotating order)
  takes over entries that *lapsed* consumers held (``XPENDING`` for that
  consumer, ``XCLAIM``) and reads new ones (``XREADGROUP ... >``) until it has
  ``limit``. A live consumer's entries are never claimed, however long its
  task runs: claims go by the holder's lease, not by idle time (Celery's
  visibility timeout redelivers a long task to a second worker). When nothing
  is ready, the consumer waits in ``XREAD BLOCK`` on every stream from its
  group's last delivered id (no side effect, so cancelling it is safe), at
  most until the earliest delayed message or lease comes due, and at most
  ``MAX_BLOCK`` (a delayed message published meanwhile by another client is
  noticed within that), then fetches again.
* Delivery count: the stream's pending-entries list counts deliveries of an
  entry; ``n`` carries the count across a hand-back (a new entry).
* Acks are batched by the base class and ride in the next fetch's Lua call
  (or, flushed by the timer, go in a call of their own), ``XACK`` + ``XDEL``
  per stream, of the entries the consumer still holds: once another consumer
  took an entry over (this one's lease lapsed), only the new holder acks it.
* Requeue / hand-back: ``XACK`` + ``XDEL`` and a new entry at the stream's
  end (it became visible now) or into the delayed set, only if the consumer
  still holds it. Dead-lettering moves an owned entry into ``P dead``.
* Errors: a refused or lost connection is :class:`BrokerUnavailable` naming
  the URL (password hidden) and how to start Redis; any other Redis error is
  :class:`BrokerError`. A pooled connection that a server restart closed is
  retried once; a consumer goes on after a restart (groups and scripts are
  created again on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import orjson

from ..brokers.base import (
    Broker,
    BrokerOptions,
    Consumer,
    DeadLetter,
    Delivery,
    QueueStats,
    logger,
)
from ..brokers.beat_store import BeatStore
from ..brokers.operations import Operations
from ..errors import (
    BrokerError,
    ConfigurationError,
    MessageError,
    SerializationError,
)
from ..protocol import Message, Outgoing, encode_envelope
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .beat import RedisBeatStore
from .connection import open_pool, storage_name
from .dead_letters import DeadLetterStream
from .errors import broker_errors
from .operations import RedisOperations
from .writes import WRITES_FROM, write_args

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the Redis broker needs the redis driver: pip install 'celeriac[redis]'"
    ) from exc

__all__ = ["RedisBroker", "RedisConsumer"]

KEY_PREFIX = "celeriac:"
QUEUE_KEY = "queue:{queue}:{priority}"
DELAYED_KEY = "delayed:{queue}"
CONSUMERS_KEY = "consumers:{queue}"
DEAD_KEY = "dead"
GROUP = "celeriac"
PRIORITIES = range(10)
MAX_BLOCK = 1.0
"""Longest single XREAD BLOCK of an idle consumer, in seconds."""
PUBLISH_CHUNK = 5000
"""Messages per publish script call: bounds how long one call holds Redis."""

SCRIPT = WRITES_FROM + importlib.resources.files(__package__).joinpath("broker.lua").read_text(
    "utf-8"
)

Tag = tuple[str, bytes, int, bytes, bytes]
"""A delivery's handle: stream key, entry id, priority, ``h`` and ``b`` as stored."""


class _Keys:
    """Every key name, with the URL's prefix."""

    def __init__(self, prefix: str):
        self.global_prefix = prefix
        """The URL's ``prefix`` (or ``global_keyprefix``) alone (beat's keys go after it)."""
        self.prefix = prefix + KEY_PREFIX
        self.dead = self.prefix + DEAD_KEY

    def stream(self, queue: str, priority: int) -> str:
        return self.prefix + QUEUE_KEY.format(queue=queue, priority=priority)

    def delayed(self, queue: str) -> str:
        return self.prefix + DELAYED_KEY.format(queue=queue)

    def consumers(self, queue: str) -> str:
        return self.prefix + CONSUMERS_KEY.format(queue=queue)

    def queue(self, queue: str) -> list[str]:
        """The 12 keys of a queue, in the order the Lua script expects."""
        return [
            self.consumers(queue),
            self.delayed(queue),
            *(self.stream(queue, p) for p in PRIORITIES),
        ]


def _head(message: Message) -> bytes:
    try:
        return orjson.dumps(
            [
                dict(message.headers),
                dict(message.properties),
                message.content_type,
                message.content_encoding,
            ]
        )
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise SerializationError(f"message headers or properties are not JSON: {exc}") from exc


def _message(head: bytes, body: bytes) -> Message:
    """The message of a stream entry's ``h`` and ``b``; MessageError if they hold none."""
    try:
        headers, properties, content_type, content_encoding = orjson.loads(head)
    except (ValueError, TypeError) as exc:  # not JSON, or not a list of four
        raise MessageError(f"stream entry is not a message: {exc}") from exc
    return Message.checked(headers, body, content_type, content_encoding, properties)


class RedisConsumer(Consumer):
    """A member of each stream's consumer group, named ``name#random``.

    The random suffix keeps a restarted worker of the same name from renewing
    (by heartbeat) the lease its dead predecessor held.
    """

    def __init__(self, broker: RedisBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._broker = broker
        self._me = f"{name}#{secrets.token_hex(4)}"
        keys = broker._keys
        self._keys = [k for q in self.queues for k in keys.queue(q)]
        self._streams = [k for q in self.queues for k in keys.queue(q)[2:]]
        """Every stream key, by queue then priority: queue ``q``'s priority ``p`` is at
        ``q * len(PRIORITIES) + p``."""
        self._key_index = {k: i + 1 for i, k in enumerate(self._keys)}
        """Stream key -> its 1-based position in the fetch script's KEYS."""
        self._consumer_keys = [keys.consumers(q) for q in self.queues]
        self._lease_ms = max(int(self.options.lease_timeout * 1000), 1)
        self._rotation = 0

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        """Buffered acks (and writes) travel in the fetch's own Lua call: one round trip."""
        deadline = time.monotonic() + timeout
        ack_args = [*write_args(writes), *self._ack_args([d.tag for d in acks])]
        while True:
            deliveries, due_in, wake_ids = await self._take(limit, ack_args)
            ack_args = []
            if deliveries:
                return deliveries
            if not wake_ids:  # entries came back, all garbage (now dead letters): look again
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            block = min(remaining, MAX_BLOCK, due_in if due_in >= 0 else MAX_BLOCK)
            streams: dict[Any, Any] = dict(zip(self._streams, wake_ids, strict=True))
            with self._broker._errors():
                await self._broker._client.xread(streams, count=1, block=max(int(block * 1000), 1))

    def _ack_args(self, tags: Sequence[Tag]) -> list[Any]:
        """Acks as the scripts read them: groups of (stream's KEYS index, count, ids)."""
        by_stream: dict[str, list[bytes]] = {}
        for tag in tags:
            by_stream.setdefault(tag[0], []).append(tag[1])
        args: list[Any] = [len(by_stream)]
        for stream, ids in by_stream.items():
            args += [self._key_index[stream], len(ids), *ids]
        return args

    async def _take(
        self, limit: int, ack_args: Sequence[Any]
    ) -> tuple[list[Delivery], float, list[bytes]]:
        """One fetch call: its deliveries, the seconds until something comes due (-1:
        nothing will), and each stream's id to wait after in ``XREAD BLOCK``.

        No wake ids when the call returned entries, even if every one was garbage.
        Deliveries it made are handed back if we are cancelled meanwhile.
        """
        self._rotation += 1
        rotation = self._rotation % len(self.queues)
        args = ["fetch", GROUP, self._me, limit, self._lease_ms, rotation, *ack_args]
        job = asyncio.ensure_future(self._broker._run(self._keys, args))
        try:
            rows, due_in, wake_ids = await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                rows = (await job)[0]
                await self._release(await self._deliveries(rows), None, uncount=True)
            raise
        return await self._deliveries(rows), due_in / 1000, wake_ids

    async def _deliveries(self, rows: list[list[Any]]) -> list[Delivery]:
        """Deliveries of the fetched entries; an entry that holds no message is buried."""
        deliveries = []
        for q, p, entry_id, count, head, body in rows:
            queue = self.queues[q]
            tag: Tag = (self._streams[q * len(PRIORITIES) + p], entry_id, p, head, body)
            try:
                message = _message(head, body)
            except MessageError as exc:
                await self._bury_garbage(queue, tag, f"undecodable stream entry: {exc}")
                continue
            deliveries.append(Delivery(message, queue, count, tag))
        return deliveries

    async def _bury_garbage(self, queue: str, tag: Tag, reason: str) -> None:
        """Dead-letter an entry's raw bytes (``h`` then ``b``), then ack it away."""
        await self._broker._dead_letter_raw(queue, tag[3] + tag[4], reason)
        await self._ack_tags([tag])
        logger.error("dead-lettered entry %s of %s: %s", tag[1].decode(), tag[0], reason)

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        await self._ack_tags([d.tag for d in deliveries], writes)

    async def _ack_tags(self, tags: Sequence[Tag], writes: Sequence[StorageWrite] = ()) -> None:
        """One script call: the writes, then the acks of the entries still ours."""
        args = ["ack", GROUP, self._me, *write_args(writes), *self._ack_args(tags)]
        await self._broker._run(self._keys, args)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        if not deliveries:
            return
        keys: list[str] = []
        args: list[Any] = ["release", GROUP, self._me]
        due = 0 if not_before is None else int(not_before * 1000)
        for d in deliveries:
            stream, entry_id, priority, head, body = d.tag
            keys += [stream, self._broker._keys.delayed(d.queue)]
            args += [entry_id, priority, d.delivery_count - int(uncount), head, body, due]
        await self._broker._run(keys, args)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        stream, entry_id, priority, head, body = delivery.tag
        keys = [stream, self._broker._keys.dead]
        args = ["bury", GROUP, self._me, entry_id, delivery.queue, priority, reason]
        await self._broker._run(keys, [*args, delivery.delivery_count, time.time(), head, body])

    async def _heartbeat(self) -> None:
        if self._closed:  # abandoned or closed while the timer slept: renew nothing
            return
        await self._broker._run(self._consumer_keys, ["beat", self._me, self._lease_ms])

    async def _close(self) -> None:
        with contextlib.suppress(BrokerError):
            await self._broker._run(self._keys, ["leave", GROUP, self._me])


class RedisBroker(Broker):
    """``redis://host:port/db`` or ``rediss://`` (TLS): see the module docstring."""

    scheme = "redis"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        # A socket_connect_timeout in the URL wins over the setting.
        pool, prefix = open_pool(url, socket_connect_timeout=self.options.connect_timeout)
        self.storage = storage_name(pool)
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._script = self._client.register_script(SCRIPT)
        configured = str(self.options.transport_options.get("global_keyprefix") or "")
        self._keys = _Keys(prefix or configured)
        self._errors = broker_errors(url)
        """redis-py's exceptions as celeriac's, naming the URL (password hidden)."""
        self._dead = DeadLetterStream(self._client, self._keys.dead, self._errors, _dead_letter)

    def consumer(self, queues: Sequence[str], name: str) -> RedisConsumer:
        return RedisConsumer(self, queues, name)

    async def connect(self) -> None:
        with self._errors():
            info = await self._client.info("server")
        version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
        if version < (6, 2):
            raise BrokerError(
                f"Redis at {redact_url(self.url)} is version {info.get('redis_version')}; "
                "the Redis broker needs 6.2 or later"
            )

    def _make_operations(self) -> Operations:
        return RedisOperations(self._client, self._keys.prefix, self._errors)

    def _make_beat_store(self) -> BeatStore:
        return RedisBeatStore(
            self._client, self._keys.global_prefix, self._errors, shares_publish=True
        )

    async def close(self) -> None:
        operations, self._operations = self._operations, None
        if operations is not None:
            await operations.close()
        await self._client.aclose(close_connection_pool=True)

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        await self._publish_with(batch, ())

    async def _publish_with(
        self, batch: Sequence[Outgoing], writes: Sequence[StorageWrite]
    ) -> None:
        """One script call per chunk: atomic, one round trip, and one command
        for redis-py (and hiredis) to pack; ``writes`` go first, with the first chunk."""
        now = time.time()
        keys = self._keys
        for start in range(0, len(batch), PUBLISH_CHUNK):
            names: dict[str, int] = {}
            args: list[Any] = ["publish", *write_args(writes if start == 0 else ())]
            for o in batch[start : start + PUBLISH_CHUNK]:
                if o.not_before is not None and o.not_before > now:
                    name = keys.delayed(o.queue)
                    member = [o.priority, 0, _head(o.message), o.message.body, os.urandom(8)]
                    packed = msgpack.packb(member, use_bin_type=False)
                    args += ["z", names.setdefault(name, len(names) + 1), int(o.not_before * 1000)]
                    args.append(packed)
                else:
                    name = keys.stream(o.queue, o.priority)
                    args += ["x", names.setdefault(name, len(names) + 1), _head(o.message)]
                    args.append(o.message.body)
            await self._run(list(names), args)

    async def purge(self, queue: str) -> int:
        return int(await self._run(self._keys.queue(queue)[1:], ["purge", GROUP]))

    async def stats(self, queue: str) -> QueueStats:
        ready, delayed, reserved = await self._run(self._keys.queue(queue)[1:], ["stats", GROUP])
        return QueueStats(int(ready), int(delayed), int(reserved))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._dead.letters(queue, limit)

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        keys, args = [self._keys.dead], ["requeue"]
        for letter_id, fields in zip(ids, await self._dead.find(ids), strict=True):
            if fields is not None and b"h" in fields:
                keys.append(self._keys.stream(fields[b"q"].decode(), int(fields[b"p"])))
                args.append(letter_id)
        if len(args) == 1:
            return 0
        return int(await self._run(keys, args))

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        return await self._dead.purge(queue)

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        await self._dead.add_raw(queue, raw, reason, p=0)

    async def _run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one command of ``broker.lua``."""
        with self._errors():
            return await self._script(keys=list(keys), args=list(args))


def _dead_letter(entry_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    queue = fields.get(b"q", b"").decode()
    reason = fields.get(b"r", b"").decode()
    count, dead_at = int(fields.get(b"c", 0)), float(fields.get(b"t", 0))
    if b"h" not in fields:
        raw = fields.get(b"x", b"")
        return DeadLetter(entry_id, queue, None, raw, reason, count, dead_at)
    message = _message(fields[b"h"], fields.get(b"b", b""))
    return DeadLetter(
        entry_id, queue, message, encode_envelope(message, queue), reason, count, dead_at
    )
