"""The operations plane of celeriac's Redis layout (``redis://``): events in a stream,
the mailbox on pub/sub, revokes in a sorted set.

Keys and channels (``P`` = the broker's key prefix + ``celeriac:``, as in
:mod:`celeriac.redis.broker`; ``<db>`` the database number, since pub/sub
channels are shared by every database of a server):

``P events``, STREAM: one entry per event, or per run of task events
    (``event_messages``), field ``b`` the event or their list (JSON).
    ``XADD`` with ``MAXLEN ~ EVENTS_MAXLEN``: the stream holds the newest entries
    only, so events that nobody reads cost bounded memory. A subscription
    reads with ``XREAD BLOCK`` after the entry that was newest when it opened.
    Lifetime: the database's (trimmed, never deleted).
``P revoked``, ZSET: task id -> until (UNIX seconds). ``ZADD GT``, so a later
    until wins. Lifetime: a member until ``revoked()`` finds it expired.
channel ``P mailbox:<db>``: commands, each ``[headers, command]`` (JSON), to
    every node subscribed at the time (``SUBSCRIBE``).
channel ``P reply:<db>:<routing key>``: replies, ``[headers, reply]`` (JSON).

Blocking reads (``XREAD BLOCK``, and pub/sub) run on a connection of each
subscription's own, taken from the broker's pool for the subscription's life.
The classes here other than :class:`RedisOperations` serve kombu's layout too
(:mod:`celeriac.redis.kombu_operations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from ..brokers.base import logger
from ..brokers.operations import Operations, Received, Subscription, event_messages
from ..errors import BrokerError, ConfigurationError
from ..serialization import json_dumps, json_loads

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the Redis broker needs the redis driver: pip install 'celeriac[redis]'"
    ) from exc

__all__ = [
    "BlockingSubscription",
    "Errors",
    "PubSubSubscription",
    "RedisOperations",
    "RedisPlane",
    "RevokedSet",
    "database",
    "own_connection",
]

EVENTS_KEY = "events"
REVOKED_KEY = "revoked"
MAILBOX_CHANNEL = "mailbox:{db}"
REPLY_CHANNEL = "reply:{db}:{routing_key}"
EVENTS_MAXLEN = 10_000
"""Events the stream keeps (about: trimmed with ``~``)."""
MAX_BLOCK = 1.0
"""Longest single blocking read, in seconds."""
CONFIRM_WAIT = 5.0
"""Seconds to wait for Redis to confirm a (P)SUBSCRIBE."""
READ_BATCH = 100
"""Most messages one read takes."""

Errors = Callable[[], contextlib.AbstractContextManager[None]]
"""The broker's mapping of redis-py's exceptions (``with errors(): ...``)."""
Fields = dict[bytes, bytes]
Decode = Callable[[bytes], list[Received]]
"""What one stored or published payload holds: none (garbage, logged), one or more."""


def database(client: aioredis.Redis) -> int:
    """The database number the client's connections select."""
    return int(client.connection_pool.connection_kwargs.get("db", 0))


def own_connection(client: aioredis.Redis) -> aioredis.Redis:
    """A client holding one connection of ``client``'s pool until closed: for blocking reads."""
    return aioredis.Redis(connection_pool=client.connection_pool, single_connection_client=True)


class BlockingSubscription(Subscription):
    """A subscription read by blocking commands (``_read``), in reads of ``MAX_BLOCK`` at most.

    A read in flight is never cancelled by a caller that stops waiting (a
    timeout, a cancelled task): the next :meth:`get` takes its result, so a
    message a read took is never lost. Only :meth:`close` cancels it.
    """

    def __init__(self, errors: Errors, opened: set[Subscription]):
        """``opened``: the plane's open subscriptions; this one is in it until closed."""
        self._errors = errors
        self._opened = opened
        opened.add(self)
        self._buffer: deque[Received] = deque()
        self._reading: asyncio.Future[list[Received]] | None = None
        self.closed = False

    @abstractmethod
    async def _read(self, block: float) -> list[Received]:
        """What arrives within ``block`` seconds (at least a millisecond): maybe nothing."""

    @abstractmethod
    async def _release(self) -> None:
        """Give back what the subscription holds (its connection, a binding)."""

    async def get(self, timeout: float) -> Received | None:
        deadline = time.monotonic() + timeout
        while not self._buffer and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._errors_mapped(min(left, MAX_BLOCK)))
            reading = self._reading
            done, _ = await asyncio.wait([reading], timeout=left)
            if self.closed or not done:
                break
            if self._reading is reading:  # else a concurrent get took its result
                self._reading = None
                self._buffer.extend(reading.result())
        if self._buffer and not self.closed:
            return self._buffer.popleft()
        # The wait ran out (no sleep left), or closed: wait as an open one would.
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))
        return None

    async def _errors_mapped(self, block: float) -> list[Received]:
        with self._errors():
            return await self._read(block)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        self._opened.discard(self)
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
            self._reading = None
        with contextlib.suppress(BrokerError), self._errors():
            await self._release()


class PubSubSubscription(BlockingSubscription):
    """What is published to a channel (``SUBSCRIBE``) or a pattern (``PSUBSCRIBE``)."""

    def __init__(self, pubsub: PubSub, decode: Decode, errors: Errors, opened: set[Subscription]):
        super().__init__(errors, opened)
        self._pubsub = pubsub
        self._decode = decode

    @classmethod
    async def open(
        cls,
        client: aioredis.Redis,
        decode: Decode,
        errors: Errors,
        opened: set[Subscription],
        *,
        channel: str = "",
        pattern: str = "",
    ) -> PubSubSubscription:
        """Subscribed to ``channel`` or ``pattern``: returns once Redis confirmed it."""
        pubsub = client.pubsub()
        try:
            with errors():
                if pattern:
                    await pubsub.psubscribe(pattern)
                else:
                    await pubsub.subscribe(channel)
                confirmed = await pubsub.get_message(timeout=CONFIRM_WAIT)
            if confirmed is None:
                raise BrokerError(f"Redis did not confirm the subscription to {pattern or channel}")
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py's types
            raise
        return cls(pubsub, decode, errors, opened)

    async def _read(self, block: float) -> list[Received]:
        """The first message within ``block``, and those already arrived behind it."""
        received: list[Received] = []
        timeout = max(block, 0.001)
        for _ in range(READ_BATCH):
            pubsub = self._pubsub
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if message is None:
                break
            received += self._decode(message["data"])
            timeout = 0.0
        return received

    async def _release(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py's types


class _StreamSubscription(BlockingSubscription):
    """A stream's entries after ``last``, field ``b`` of each decoded by ``decode``."""

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        last: bytes,
        decode: Decode,
        errors: Errors,
        opened: set[Subscription],
    ):
        super().__init__(errors, opened)
        self._client = client
        self._key = key
        self._last = last
        self._decode = decode

    async def _read(self, block: float) -> list[Received]:
        streams: dict[Any, Any] = {self._key: self._last}
        reply = await self._client.xread(streams, count=READ_BATCH, block=max(int(block * 1000), 1))
        received: list[Received] = []
        for _, entries in cast(list[tuple[bytes, list[tuple[bytes, Fields]]]], reply or []):
            for entry_id, fields in entries:
                self._last = entry_id
                received += self._decode(fields.get(b"b", b""))
        return received

    async def _release(self) -> None:
        await self._client.aclose()


class RevokedSet:
    """Revokes in one ZSET: task id -> until (UNIX seconds)."""

    def __init__(self, client: aioredis.Redis, key: str, errors: Errors):
        self._client = client
        self._key = key
        self._errors = errors

    async def store(self, revoked: Mapping[str, float]) -> None:
        """``ZADD GT``: a later until for an id wins, an earlier one changes nothing."""
        scores = {task_id: float(until) for task_id, until in revoked.items()}
        if scores:
            with self._errors():
                await self._client.zadd(self._key, scores, gt=True)

    async def read(self) -> dict[str, float]:
        """The revokes not yet expired, the expired ones deleted in the same transaction."""
        now = time.time()
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self._key, "-inf", now)
                pipe.zrange(self._key, 0, -1, withscores=True)
                _, members = await pipe.execute()
        return {member.decode(): float(score) for member, score in members}


def _event(payload: bytes) -> list[Received]:
    try:
        body = json_loads(payload)
    except ValueError as exc:
        logger.warning("skipped an event that is not JSON: %s", exc)
        return []
    events = body if isinstance(body, list) else [body]  # a list: one entry per batch
    if not all(isinstance(event, dict) for event in events):
        logger.warning("skipped an event that is not a JSON object: %.200r", body)
        return []
    return [Received(event, {"hostname": event.get("hostname")}) for event in events]


def _framed(payload: bytes) -> list[Received]:
    """A command or reply: ``[headers, body]``."""
    try:
        headers, body = json_loads(payload)
        if not isinstance(headers, dict) or not isinstance(body, dict):
            raise ValueError("headers or body is not a JSON object")
    except (ValueError, TypeError) as exc:
        logger.warning("skipped a mailbox message that is not [headers, body]: %s", exc)
        return []
    return [Received(body, headers)]


def _frame(headers: Mapping[str, Any], body: Mapping[str, Any]) -> bytes:
    return json_dumps([dict(headers), dict(body)])


class RedisPlane(Operations):
    """What both Redis layouts' planes share: the broker's pool and error mapping, the
    revokes in a sorted set, the subscriptions to close with the plane."""

    def __init__(self, client: aioredis.Redis, revoked_key: str, errors: Errors):
        self._client = client
        self._errors = errors
        self._revoked = RevokedSet(client, revoked_key, errors)
        self._opened: set[Subscription] = set()

    async def store_revoked(self, revoked: Mapping[str, float]) -> None:
        await self._revoked.store(revoked)

    async def revoked(self) -> dict[str, float]:
        return await self._revoked.read()

    async def close(self) -> None:
        for subscription in list(self._opened):
            await subscription.close()


class RedisOperations(RedisPlane):
    """The plane of one ``RedisBroker``, on its connection pool; see the module docstring."""

    def __init__(self, client: aioredis.Redis, prefix: str, errors: Errors):
        """``prefix``: the broker's, ``celeriac:`` included (``P`` above)."""
        super().__init__(client, prefix + REVOKED_KEY, errors)
        db = database(client)
        self._events = prefix + EVENTS_KEY
        self._mailbox = prefix + MAILBOX_CHANNEL.format(db=db)
        self._reply = prefix + REPLY_CHANNEL.format(db=db, routing_key="")

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for _, body in event_messages(events):
                    fields: dict[Any, Any] = {"b": json_dumps(body)}
                    pipe.xadd(self._events, fields, maxlen=EVENTS_MAXLEN, approximate=True)
                await pipe.execute()

    async def subscribe_events(self) -> Subscription:
        with self._errors():
            newest = cast(list[Any], await self._client.xrevrange(self._events, count=1))
        last: bytes = newest[0][0] if newest else b"0-0"
        client = own_connection(self._client)
        return _StreamSubscription(client, self._events, last, _event, self._errors, self._opened)

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        with self._errors():
            await self._client.publish(self._mailbox, _frame(headers, command))

    async def subscribe_commands(self, hostname: str) -> Subscription:
        return await PubSubSubscription.open(
            self._client, _framed, self._errors, self._opened, channel=self._mailbox
        )

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        channel = self._reply + str(reply_to.get("routing_key"))
        with self._errors():
            await self._client.publish(channel, _frame(headers, reply))

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        return await PubSubSubscription.open(
            self._client, _framed, self._errors, self._opened, channel=self._reply + routing_key
        )
