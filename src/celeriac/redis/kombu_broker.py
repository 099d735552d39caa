"""The Redis broker on kombu's layout (``redis://...?layout=kombu``), for fleets that
run Celery and celeriac workers and clients on one Redis during a migration.

Chosen by the URL's ``?layout=kombu`` or ``broker_transport_options={"layout":
"kombu"}``; the options of :mod:`celeriac.redis.kombu_layout` (kombu's own names:
``visibility_timeout``, ``priority_steps``, ...) must match the Celery peers'.

Keys: exactly kombu's, listed in :mod:`celeriac.redis.kombu_layout`; the operations
plane's (events, the mailbox, revokes) in :mod:`celeriac.redis.kombu_operations`;
beat's, the same as on celeriac's layout, in :mod:`celeriac.redis.beat`.

Mechanism, and where it differs from Celery's worker:

* Publish: one ``MULTI``: the bindings, then ``LPUSH`` per message. A delay is
  the ``eta`` header, as Celery sends it: the message waits in the list.
* Fetch: one Lua call pops from the lists (priority step 0 first, as kombu's
  ``BRPOP`` reads them, queues in rotating order) and records each delivery in
  ``unacked`` and ``unacked_index`` in the same call, so no crash loses one.
  An idle consumer looks again every ``poll_interval`` (a ``BRPOP`` would
  remove a message that a cancelled wait then loses).
* ETA/countdown: a message whose ``eta`` is ahead waits in the consumer that
  took it, as Celery's worker keeps ETA tasks: unacked, its index time renewed
  by the heartbeat, handed out by ``fetch`` once due. A worker that dies loses
  none: a sweep restores them after ``visibility_timeout``. A hand-back with a
  delay waits in the consumer the same way.
* Acks, heartbeats, hand-backs and dead-lettering are Lua calls that touch a
  delivery only while its ``unacked`` entry is the one this consumer took: a
  delivery restored meanwhile (it got a fresh tag) is someone else's. The
  heartbeat runs every ``broker_lease_timeout / 4``, the lease cut to
  ``visibility_timeout`` when it is longer.
* Restore: every ``unacked_restore_interval`` (at most a quarter of
  ``visibility_timeout``) a consumer takes ``unacked_mutex`` and puts back every delivery older than
  ``visibility_timeout`` (kombu's ``restore_visible``), at the consuming end.
  So a live Celery worker's task that runs past the timeout is delivered again,
  as in Celery; set ``visibility_timeout`` above the longest task and ETA.
* Delivery count: kombu keeps none; celeriac counts in the envelope (property
  ``x-celeriac-deliveries``) the restores it makes, so after ``max_deliveries``
  of them a message goes to the dead letters. Celery's restores do not count.
* Priorities are kombu's on Redis: step 0 is served first (priority 0 is the
  highest) and priorities within one step keep publish order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import importlib.resources
import itertools
import time
from collections.abc import Sequence
from typing import Any, cast

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
from ..errors import BrokerError, ConfigurationError, MessageError
from ..protocol import Outgoing
from ..shared_storage import StorageWrite
from . import kombu_codec as codec
from .beat import RedisBeatStore
from .connection import open_pool
from .dead_letters import DeadLetterStream
from .errors import broker_errors
from .kombu_layout import KombuLayout, split_layout
from .kombu_operations import KombuRedisOperations

try:
    import redis.asyncio as aioredis
    from redis.exceptions import LockError
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the Redis broker needs the redis driver: pip install 'celeriac[redis]'"
    ) from exc

__all__ = ["KombuRedisBroker", "KombuRedisConsumer"]

SCRIPT = importlib.resources.files(__package__).joinpath("kombu.lua").read_text("utf-8")

Tag = tuple[str, bytes, bytes]
"""A delivery's handle: its delivery tag, its ``unacked`` entry and its envelope."""

Restore = tuple[str, bytes, bytes, list[str]]
"""One delivery to put back: tag, the ``unacked`` entry expected, new envelope, lists."""

Routes = dict[tuple[str, str], list[str]]
"""(exchange, routing key) -> the queues it routes to."""


class KombuRedisConsumer(Consumer):
    """Takes envelopes from kombu's lists; holds the ones whose ETA is ahead."""

    def __init__(self, broker: KombuRedisBroker, queues: Sequence[str], name: str):
        super().__init__(broker, queues, name)
        self._broker = broker
        self._rotation = 0
        self._waiting: list[tuple[float, int, Delivery]] = []
        """Deliveries held until their ETA (or a hand-back's delay): a heap by due time."""
        self._order = itertools.count()

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        if acks:
            await self._ack(acks)
        deadline = time.monotonic() + timeout
        while True:
            await self._broker.maybe_restore()
            ready = self._due(limit)
            if len(ready) < limit:
                taken = await self._take(limit - len(ready))
                now = time.time()
                for delivery, eta in taken:
                    if eta is not None and eta > now:
                        self._wait(delivery, eta)
                    else:
                        ready.append(delivery)
                if taken and not ready:  # all wait for their ETA: take the next ones
                    continue
            if ready:
                return ready
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = min(remaining, self.options.poll_interval)
            if self._waiting:
                pause = min(pause, max(self._waiting[0][0] - time.time(), 0.0))
            await asyncio.sleep(pause)

    def _wait(self, delivery: Delivery, due: float) -> None:
        heapq.heappush(self._waiting, (due, next(self._order), delivery))

    def _due(self, limit: int) -> list[Delivery]:
        now, due = time.time(), list[Delivery]()
        while self._waiting and self._waiting[0][0] <= now and len(due) < limit:
            due.append(heapq.heappop(self._waiting)[2])
        return due

    async def _take(self, limit: int) -> list[tuple[Delivery, float | None]]:
        """One take call; the deliveries it made go back if we are cancelled meanwhile."""
        layout = self._broker.layout
        self._rotation += 1
        start = self._rotation % len(self.queues)
        queues = self.queues[start:] + self.queues[:start]
        lists = [(layout.queue_key(q, step), q) for step in layout.priority_steps for q in queues]
        keys = [layout.unacked, layout.unacked_index, layout.dead, *(k for k, _ in lists)]
        args = ["take", time.time(), limit, *(q for _, q in lists)]
        job = asyncio.ensure_future(self._broker.run(keys, args))
        try:
            rows = await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                taken = await self._deliveries(await job, lists)
                await self._release([d for d, _ in taken], None, uncount=True)
            raise
        return await self._deliveries(rows, lists)

    async def _deliveries(
        self, rows: list[list[Any]], lists: list[tuple[str, str]]
    ) -> list[tuple[Delivery, float | None]]:
        """Deliveries (with their ETA) of the taken envelopes; one that holds no
        message goes to the dead letters."""
        out = []
        for number, envelope, entry, delivery_tag in rows:
            queue = lists[number - 1][1]
            tag: Tag = (delivery_tag.decode(), entry, envelope)
            try:
                incoming = codec.decode(envelope)
            except MessageError as exc:
                await self._bury(tag, queue, f"undecodable: {exc}", 1, "x")
                continue
            out.append((Delivery(incoming.message, queue, incoming.count, tag), incoming.eta))
        return out

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        await self._settle("ack", deliveries)

    async def _heartbeat(self) -> None:
        if self._closed:  # abandoned or closed while the timer slept: renew nothing
            return
        held = [*self._held.values(), *(d for _, _, d in self._waiting)]
        if held:
            await self._settle("beat", held)

    async def _settle(self, how: str, deliveries: Sequence[Delivery]) -> None:
        layout = self._broker.layout
        args: list[Any] = ["settle", how, time.time()]
        for d in deliveries:
            tag, entry, _ = cast(Tag, d.tag)
            args += [tag, entry]
        await self._broker.run([layout.unacked, layout.unacked_index], args)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        """Now: back in the list (at the consuming end when uncounted, as kombu's
        shutdown restore; at the far end otherwise, as kombu's ``reject`` with ``requeue``).
        Later: held here until ``not_before``, as an ETA."""
        if not_before is not None and not_before > time.time():
            for d in deliveries:
                d.delivery_count += 0 if uncount else 1
                self._wait(d, not_before)
            return
        restores: list[Restore] = []
        for d in deliveries:
            tag, entry, envelope = cast(Tag, d.tag)
            decoded = orjson.loads(envelope)
            lists = [self._broker.layout.queue_key(d.queue, codec.priority(decoded))]
            earlier = d.delivery_count - int(uncount)
            restores.append((tag, entry, codec.restored(decoded, earlier), lists))
        await self._broker.restore(restores, "RPUSH" if uncount else "LPUSH")

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._bury(cast(Tag, delivery.tag), delivery.queue, reason, delivery.delivery_count)

    async def _bury(self, tag: Tag, queue: str, reason: str, count: int, field: str = "e") -> None:
        layout = self._broker.layout
        keys = [layout.unacked, layout.unacked_index, layout.dead]
        delivery_tag, entry, envelope = tag
        args = ["bury", delivery_tag, entry, queue, reason, count, time.time(), envelope, field]
        await self._broker.run(keys, args)

    async def _close(self) -> None:
        """Hand back, uncounted, what waits here for its ETA (the base class did the rest)."""
        waiting, self._waiting = [d for _, _, d in self._waiting], []
        with contextlib.suppress(BrokerError):
            await self._release(waiting, None, uncount=True)


class KombuRedisBroker(Broker):
    """``redis://host:port/db?layout=kombu``: see the module docstring."""

    scheme = "redis"

    def __init__(self, url: str, options: BrokerOptions | None = None):
        super().__init__(url, options)
        plain, from_url = split_layout(url)
        # A socket_connect_timeout in the URL wins over the setting.
        pool, prefix = open_pool(plain, socket_connect_timeout=self.options.connect_timeout)
        settings = {**self.options.transport_options, **from_url}
        prefix = prefix or str(settings.get("global_keyprefix") or "")
        self.layout = KombuLayout.from_options(prefix, settings)
        if self.options.lease_timeout > self.layout.visibility_timeout:
            # The heartbeat (every lease / 4) must renew within the visibility timeout.
            lease = self.layout.visibility_timeout
            self.options = dataclasses.replace(self.options, lease_timeout=lease)
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._script = self._client.register_script(SCRIPT)
        self._next_sweep = 0.0
        self._errors = broker_errors(url)
        """redis-py's exceptions as celeriac's, naming the URL (password hidden)."""
        self._dead = DeadLetterStream(self._client, self.layout.dead, self._errors, _dead_letter)

    def consumer(self, queues: Sequence[str], name: str) -> KombuRedisConsumer:
        return KombuRedisConsumer(self, queues, name)

    async def connect(self) -> None:
        with self._errors():
            await self._client.ping()

    def _make_operations(self) -> Operations:
        options = self.options.transport_options
        return KombuRedisOperations(self._client, self.layout, self._errors, options)

    def _make_beat_store(self) -> BeatStore:
        """celeriac's own keys, as on its layout; beat records with a call of its own
        (a publish here is a ``MULTI``, which takes no fenced write)."""
        return RedisBeatStore(self._client, self.layout.prefix, self._errors, shares_publish=False)

    async def close(self) -> None:
        operations, self._operations = self._operations, None
        if operations is not None:
            await operations.close()
        await self._client.aclose(close_connection_pool=True)

    async def _publish(self, batch: Sequence[Outgoing]) -> None:
        layout, now = self.layout, time.time()
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                for queue in dict.fromkeys(o.queue for o in batch):
                    member = layout.binding(queue, queue)
                    pipe.sadd(layout.binding_key(queue), member)
                    pipe.sadd(layout.permanent_binding_key(queue), member)
                for o in batch:
                    later = (
                        o.not_before if o.not_before is not None and o.not_before > now else None
                    )
                    envelope = codec.encode(o.message, o.queue, o.priority, later)
                    pipe.lpush(layout.queue_key(o.queue, o.priority), envelope)
                await pipe.execute()

    async def purge(self, queue: str) -> int:
        """Empty the queue's lists (kombu's `Channel._purge`); deliveries held stay."""
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                for key in self.layout.queue_keys(queue):
                    pipe.llen(key)
                    pipe.delete(key)
                sizes = await pipe.execute()
        return sum(int(n) for n in sizes[::2])

    async def stats(self, queue: str) -> QueueStats:
        """``ready``: the queue's lists (ETA messages no worker took yet included);
        ``delayed``: unacked deliveries that wait for their ETA; ``reserved``: the
        other unacked deliveries of the queue."""
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for key in self.layout.queue_keys(queue):
                    pipe.llen(key)
                ready = sum(int(n) for n in await pipe.execute())
            delayed = reserved = 0
            now, routes = time.time(), Routes()
            async for _, entry in self._client.hscan_iter(self.layout.unacked):
                try:
                    envelope, exchange, routing_key = _unacked(entry)
                except MessageError:  # not celeriac's or kombu's: no queue's
                    continue
                if queue not in await self.destinations(exchange, routing_key, routes):
                    continue
                eta = codec.eta_of(envelope)
                if eta is not None and eta > now:
                    delayed += 1
                else:
                    reserved += 1
        return QueueStats(ready, delayed, reserved)

    async def destinations(self, exchange: str, routing_key: str, known: Routes) -> list[str]:
        """kombu's `Channel._lookup` for a direct exchange: the queues bound with the
        routing key (no exchange: the routing key names the queue; none bound: it does
        too). ``known`` keeps the answers of one sweep or count."""
        if not exchange:
            return [routing_key]
        route = (exchange, routing_key)
        if route not in known:
            with self._errors():
                reply = await self._client.smembers(self.layout.binding_key(exchange))
            bound = self.layout.bound_queues(list(cast(set[bytes], reply)), routing_key)
            known[route] = bound or [routing_key]
        return known[route]

    async def maybe_restore(self) -> None:
        """A restore sweep, if this broker made none for ``unacked_restore_interval``."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.layout.restore_interval
        await self.restore_visible()

    async def restore_visible(self) -> int:
        """``kombu.transport.redis.QoS.restore_visible``: under ``unacked_mutex``, put back every
        delivery taken more than ``visibility_timeout`` ago; how many were."""
        layout = self.layout
        lock = self._client.lock(layout.unacked_mutex, timeout=layout.mutex_expire)
        with self._errors():
            if not await lock.acquire(blocking=False):
                return 0  # another worker (Celery's or ours) is sweeping
            try:
                return await self._restore_older_than(time.time() - layout.visibility_timeout)
            finally:
                with contextlib.suppress(LockError):
                    await lock.release()

    async def _restore_older_than(self, ceil: float) -> int:
        layout, limit = self.layout, self.layout.restore_limit
        reply = await self._client.zrange(
            layout.unacked_index,
            ceil,  # a score here (BYSCORE), though redis-py's types say a rank
            0,
            desc=True,
            byscore=True,
            offset=0 if limit else None,
            num=limit,
        )
        tags = cast(list[bytes], reply)
        if not tags:
            return 0
        entries = cast(list[bytes | None], await self._client.hmget(layout.unacked, tags))
        restores: list[Restore] = []
        routes = Routes()
        for tag, entry in zip(tags, entries, strict=True):
            if entry is None:  # acked meanwhile, or a stale index entry
                await self._client.zrem(layout.unacked_index, tag)
                continue
            try:
                envelope, exchange, routing_key = _unacked(entry)
            except MessageError as exc:  # left alone: kombu's restore would fail on it too
                logger.error("cannot restore unacked delivery %r: %s", tag, exc)
                continue
            queues = await self.destinations(exchange, routing_key, routes)
            lists = [layout.queue_key(q, codec.priority(envelope)) for q in queues]
            earlier = codec.earlier_deliveries(envelope) + 1
            restores.append((tag.decode(), entry, codec.restored(envelope, earlier), lists))
        return await self.restore(restores, "RPUSH")

    async def restore(self, restores: Sequence[Restore], push: str) -> int:
        """Put deliveries back with ``push``, each only if still unacked as expected."""
        if not restores:
            return 0
        keys = [self.layout.unacked, self.layout.unacked_index]
        index: dict[str, int] = {}
        args: list[Any] = ["restore"]
        for tag, entry, envelope, lists in restores:
            numbers = [index.setdefault(k, len(keys) + len(index) + 1) for k in lists]
            args += [tag, entry, envelope, push, len(numbers), *numbers]
        return int(await self.run([*keys, *index], args))

    async def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._dead.letters(queue, limit)

    async def requeue_dead_letters(self, ids: Sequence[str]) -> int:
        """Each dead message back at the end of its queue's list, its count cleared."""
        found = await self._dead.find(ids)
        with self._errors():
            requeued = 0
            async with self._client.pipeline(transaction=True) as pipe:
                for letter_id, fields in zip(ids, found, strict=True):
                    if fields is None or b"e" not in fields:
                        continue
                    envelope = orjson.loads(fields[b"e"])
                    key = self.layout.queue_key(fields[b"q"].decode(), codec.priority(envelope))
                    pipe.lpush(key, codec.fresh(envelope))
                    pipe.xdel(self.layout.dead, letter_id)
                    requeued += 1
                await pipe.execute()
        return requeued

    async def purge_dead_letters(self, queue: str | None = None) -> int:
        return await self._dead.purge(queue)

    async def _dead_letter_raw(self, queue: str, raw: bytes, reason: str) -> None:
        await self._dead.add_raw(queue, raw, reason)

    async def run(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one command of ``kombu.lua``."""
        with self._errors():
            return await self._script(keys=list(keys), args=list(args))


def _unacked(entry: bytes) -> tuple[dict[str, Any], str, str]:
    """An ``unacked`` hash value: the envelope, its exchange and routing key."""
    try:
        envelope, exchange, routing_key = orjson.loads(entry)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise MessageError(f"not [envelope, exchange, routing_key]: {exc}") from exc
    if not isinstance(envelope, dict):
        raise MessageError("the envelope is not a JSON object")
    return envelope, str(exchange or ""), str(routing_key or "")


def _dead_letter(entry_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    queue = fields.get(b"q", b"").decode()
    reason = fields.get(b"r", b"").decode()
    count, dead_at = int(fields.get(b"c", 0)), float(fields.get(b"t", 0))
    raw = fields.get(b"e")
    if raw is None:
        return DeadLetter(entry_id, queue, None, fields.get(b"x", b""), reason, count, dead_at)
    return DeadLetter(entry_id, queue, codec.decode(raw).message, raw, reason, count, dead_at)
