"""The operations plane on kombu's Redis layout (``?layout=kombu``): exactly what kombu
5.7's Redis transport does for Celery's events and mailbox, so ``celery inspect``,
``celery events``, Flower and celeriac meet on one Redis.

Every message is kombu's JSON envelope (:func:`_envelope`: base64 body, JSON
content), its headers as Celery sends them: ``hostname`` on an event, ``clock``
and ``expires`` on a command, ``ticket`` and ``clock`` on a reply.
``G`` is the ``global_keyprefix`` (celeriac's ``prefix``), which kombu puts before
keys and pub/sub channels alike; ``F`` is kombu's fanout prefix, ``/<db>.`` (the
``fanout_prefix`` transport option: ``False`` makes it empty, a string replaces it).

Events: Celery makes ``celeryev`` a *fanout* exchange on Redis
(``celery.events.event.get_exchange``), so an event is a ``PUBLISH`` to the channel
``G F celeryev/<routing key>`` (``task.succeeded``; without the ``/<routing
key>`` when the ``fanout_patterns`` option is off), and a listener (Celery's
``EventReceiver`` binds ``#``) ``PSUBSCRIBE``s ``G F celeryev/*``. A Celery worker
sends task events in groups, one envelope whose body is a list (routing key
``task.multi``): a subscription yields each event of it. Nothing is stored.

Commands: ``celery.pidbox`` is a fanout exchange: a command is a ``PUBLISH`` to
``G F celery.pidbox``, and a node ``PSUBSCRIBE``s it (Celery's node does so for its
``<hostname>.celery.pidbox`` queue).

Replies: ``reply.celery.pidbox`` is a direct exchange. A sender reads the
exchange's binding table ``G _kombu.binding.reply.celery.pidbox`` (SET, members
``<routing key>\\x06\\x16\\x06\\x16<queue>``) and ``LPUSH``es the reply to each queue
bound with the ``reply_to`` routing key: the list ``G <queue>``. A subscription
is Celery's client's reply queue ``<routing key>.reply.celery.pidbox``: it adds
the binding and raises the exchange's deadline in ``G _kombu.binding_deadlines``
(ZSET, exchange -> UNIX ms, kombu's sweep deletes a table nobody refreshed in
time) as kombu does for a queue with an expiry, again every ``REFRESH_EVERY``
seconds while it reads; it reads the queue's lists (``G <queue>`` and the
priority steps' ``G <queue>\\x06\\x16<step>``) with ``BRPOP``; closing removes the
binding (and from ``G _kombu.binding_permanent.reply.celery.pidbox``) and the lists.

Revokes (kombu has none): ``G celeriac:kombu-revoked``, ZSET, task id -> until
(UNIX seconds), as in :mod:`celeriac.redis.operations`.

One thing celeriac leaves out: Celery's listeners of events and commands also
add their queue to the exchange's binding table (with a deadline), which
nothing reads on Redis (fanout delivery is pub/sub); celeriac's add nothing,
so a listener that dies leaves nothing behind.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ..brokers.base import logger
from ..brokers.operations import (
    EVENT_EXCHANGE,
    MAILBOX_EXCHANGE,
    REPLY_EXCHANGE,
    Received,
    Subscription,
    event_messages,
)
from ..errors import MessageError
from ..protocol import decode_envelope
from ..serialization import json_dumps, json_loads
from .kombu_layout import KombuLayout
from .operations import (
    BlockingSubscription,
    Errors,
    PubSubSubscription,
    RedisPlane,
    database,
    own_connection,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["KombuRedisOperations"]

REVOKED_KEY = "celeriac:kombu-revoked"
"""celeriac's own ZSET of revokes (kombu keeps none)."""
DEADLINES_KEY = "_kombu.binding_deadlines"
BINDING_TTL = 3600.0
"""Seconds a reply queue's binding table lives unrefreshed, as kombu has it: its
``kombu.transport.redis.MIN_BINDING_TTL`` (Celery's reply queues expire after 10 s,
and kombu never goes below an hour)."""
REFRESH_EVERY = BINDING_TTL / 3
"""kombu refreshes a binding every third of its lifetime."""
REFRESH_BINDING = """
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"""
"""kombu 5.7's ``REFRESH_BINDING``: add member ARGV[1] to the binding table KEYS[1] and
raise exchange ARGV[2]'s deadline in KEYS[2] to ARGV[3] ms from now (server clock)."""
TRANSIENT, PERSISTENT = 1, 2
"""kombu's ``delivery_mode``: events and replies are transient, commands persistent."""


def _fanout_prefix(options: Mapping[str, Any], db: int) -> str:
    """kombu's ``keyprefix_fanout`` for the ``fanout_prefix`` transport option (true by
    default: ``/<db>.``; false: none; a string: that one, ``{db}`` in it replaced)."""
    chosen = options.get("fanout_prefix", True)
    if not chosen:
        return ""
    return (chosen if isinstance(chosen, str) else "/{db}.").format(db=db)


def _envelope(
    body: Any, headers: Mapping[str, Any], exchange: str, routing_key: str, delivery_mode: int
) -> bytes:
    """The envelope kombu's producer publishes for ``body`` (JSON), field for field."""
    return json_dumps(
        {
            "body": base64.b64encode(json_dumps(body)).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": dict(headers),
            "properties": {
                "delivery_mode": delivery_mode,
                "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _received(raw: bytes) -> list[Received]:
    """The bodies in one envelope (a list body is several events), with its headers;
    none, logged, when it is not a JSON envelope."""
    try:
        message = decode_envelope(raw)
        if message.content_type != "application/json":
            raise MessageError(f"content type {message.content_type!r}, not application/json")
        body = json_loads(message.body)
    except (MessageError, ValueError) as exc:
        logger.warning("skipped a message that is not a kombu JSON envelope: %s", exc)
        return []
    bodies = body if isinstance(body, list) else [body]
    kept = [Received(b, message.headers) for b in bodies if isinstance(b, dict)]
    if len(kept) < len(bodies):
        logger.warning("skipped a message body that is not a JSON object: %.200r", body)
    return kept


class _ReplyQueue(BlockingSubscription):
    """Celery's reply queue for one routing key: bound, read with ``BRPOP``, then removed."""

    def __init__(
        self,
        client: aioredis.Redis,
        layout: KombuLayout,
        routing_key: str,
        errors: Errors,
        opened: set[Subscription],
    ):
        super().__init__(errors, opened)
        self._client = client
        self._reader = own_connection(client)
        self._layout = layout
        queue = f"{routing_key}.{REPLY_EXCHANGE}"
        self._member = layout.binding(routing_key, queue)
        self._lists = layout.queue_keys(queue)
        self._refresh = client.register_script(REFRESH_BINDING)
        self._refresh_at = 0.0

    async def bind(self) -> None:
        """Add the binding and push the table's deadline ``BINDING_TTL`` ahead."""
        layout = self._layout
        keys = [layout.binding_key(REPLY_EXCHANGE), layout.prefix + DEADLINES_KEY]
        args: list[str | int] = [self._member, REPLY_EXCHANGE, int(BINDING_TTL * 1000)]
        with self._errors():
            await self._refresh(keys=keys, args=args)
        self._refresh_at = time.monotonic() + REFRESH_EVERY

    async def _read(self, block: float) -> list[Received]:
        if time.monotonic() >= self._refresh_at:
            await self.bind()
        popped = await self._reader.brpop(self._lists, timeout=max(block, 0.01))
        return _received(cast(tuple[bytes, bytes], popped)[1]) if popped else []

    async def _release(self) -> None:
        """kombu's ``Channel._delete``: the binding out of both tables, the lists deleted."""
        layout = self._layout
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.srem(layout.binding_key(REPLY_EXCHANGE), self._member)
                pipe.srem(layout.permanent_binding_key(REPLY_EXCHANGE), self._member)
                pipe.delete(*self._lists)
                await pipe.execute()
        finally:
            await self._reader.aclose()


class KombuRedisOperations(RedisPlane):
    """The plane of one ``KombuRedisBroker``, on its connection pool; see the module docstring."""

    def __init__(
        self,
        client: aioredis.Redis,
        layout: KombuLayout,
        errors: Errors,
        transport_options: Mapping[str, Any],
    ):
        super().__init__(client, layout.prefix + REVOKED_KEY, errors)
        self._layout = layout
        fanout = layout.prefix + _fanout_prefix(transport_options, database(client))
        self._patterns = bool(transport_options.get("fanout_patterns", True))
        self._events = fanout + EVENT_EXCHANGE
        self._mailbox = fanout + MAILBOX_EXCHANGE

    async def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        if not events:
            return
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, body in event_messages(events):
                    channel = f"{self._events}/{key}" if self._patterns else self._events
                    first = body[0] if isinstance(body, list) else body
                    headers = {"hostname": first.get("hostname")}
                    pipe.publish(channel, _envelope(body, headers, EVENT_EXCHANGE, key, TRANSIENT))
                await pipe.execute()

    async def subscribe_events(self) -> Subscription:
        pattern = f"{self._events}/*" if self._patterns else self._events
        return await PubSubSubscription.open(
            self._client, _received, self._errors, self._opened, pattern=pattern
        )

    async def send_command(self, command: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        published = _envelope(command, headers, MAILBOX_EXCHANGE, "", PERSISTENT)
        with self._errors():
            await self._client.publish(self._mailbox, published)

    async def subscribe_commands(self, hostname: str) -> Subscription:
        return await PubSubSubscription.open(
            self._client, _received, self._errors, self._opened, pattern=self._mailbox
        )

    async def send_reply(
        self, reply_to: Mapping[str, Any], reply: Mapping[str, Any], headers: Mapping[str, Any]
    ) -> None:
        """kombu's direct exchange: to every queue bound with the routing key; none, dropped."""
        layout = self._layout
        exchange = str(reply_to.get("exchange") or REPLY_EXCHANGE)
        routing_key = str(reply_to.get("routing_key") or "")
        with self._errors():
            members = cast(set[bytes], await self._client.smembers(layout.binding_key(exchange)))
            queues = layout.bound_queues(list(members), routing_key)
            if not queues:
                return
            published = _envelope(reply, headers, exchange, routing_key, TRANSIENT)
            async with self._client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.lpush(layout.queue_key(queue, 0), published)
                await pipe.execute()

    async def subscribe_replies(self, routing_key: str) -> Subscription:
        queue = _ReplyQueue(self._client, self._layout, routing_key, self._errors, self._opened)
        try:
            await queue.bind()
        except BaseException:
            await queue.close()
            raise
        return queue
