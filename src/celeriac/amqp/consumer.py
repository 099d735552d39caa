"""Consuming from RabbitMQ: the consumer side of ``celeriac.amqp.broker``.

The consumer knows its broker through ``Rabbit``, the few things it uses of it
(channels, declarations, publishing with a delivery count, dead letters, the
count of unacked deliveries), so this module imports no broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..brokers.base import Broker, Consumer, Delivery
from ..errors import BrokerError, MessageError
from ..protocol import Message, Outgoing, parse_timestamp
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .wire import COUNT_HEADER, NOT_BEFORE_HEADER, from_incoming, unavailable

if TYPE_CHECKING:
    from collections import Counter

    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

__all__ = ["AmqpConsumer", "Rabbit"]


class Rabbit(Protocol):
    """What an ``AmqpConsumer`` uses of its broker (``AmqpBroker`` is one)."""

    queue_type: str
    """``classic`` or ``quorum``: quorum queues take a per-consumer prefetch only."""
    reserved: Counter[str]
    """Unacked deliveries per queue, which the consumer keeps up to date."""

    def name(self, queue: str) -> str:
        """The AMQP name of ``queue`` (with the broker's prefix)."""

    async def declare(self, queue: str) -> None:
        """Declare ``queue`` (and its delay queues) unless it exists."""

    async def channel(self, *, confirms: bool = False) -> AbstractChannel:
        """A new channel on the broker's connection."""

    async def publish_all(
        self, batch: Sequence[Outgoing], count: dict[int, int] | None = None
    ) -> None:
        """Publish ``batch``, message ``i`` reporting delivery count ``count[i]`` next."""

    async def publish_dead(
        self, queue: str, message: Message | None, raw: bytes, reason: str, count: int
    ) -> None:
        """Put a message (or raw bytes) in the dead-letter queue."""


class AmqpConsumer(Consumer):
    """Deliveries pushed by ``basic_consume`` into a buffer; prefetch follows ``limit``."""

    def __init__(self, broker: Broker, queues: Sequence[str], name: str, *, rabbit: Rabbit):
        """``rabbit`` is ``broker`` itself, seen through what this consumer uses of it."""
        super().__init__(broker, queues, name)
        self._rabbit = rabbit
        self._channel: AbstractChannel | None = None
        self._buffer: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        self._prefetch = 0
        self._unsettled = False
        """A channel just opened: the first fetch waits for its burst (priority order)."""
        self._unacked: dict[int, str] = {}
        """id(incoming message) -> queue, for every unacked delivery on the channel."""
        self._tags: dict[str, str] = {}
        """consumer tag -> queue ("" once cancelled)."""
        self._cancelled: dict[str, str] = {}
        self._global_qos = rabbit.queue_type == "classic"
        """Quorum queues refuse a channel-wide prefetch; theirs is per consumer."""

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        tag = incoming.consumer_tag or ""
        queue = self._tags.get(tag) or self._cancelled.get(tag) or self.queues[0]
        self._unacked[id(incoming)] = queue
        self._rabbit.reserved[queue] += 1
        self._buffer.append(incoming)
        self._arrived.set()

    def _queue_of(self, incoming: AbstractIncomingMessage) -> str:
        return self._unacked.get(id(incoming)) or self.queues[0]

    async def _open(self, limit: int) -> AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        if self._channel is not None:
            self._forget_channel()
            raise BrokerError(f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}")
        try:
            for queue in self.queues:
                await self._rabbit.declare(queue)
            channel = await self._rabbit.channel()
            await channel.set_qos(prefetch_count=limit, global_=self._global_qos)
            self._prefetch = limit
            channel.close_callbacks.add(lambda *_: self._arrived.set())
            await self._consume(channel)
            self._unsettled = True
        except BrokerError:
            raise
        except Exception as exc:
            raise unavailable(self.broker.url, exc) from exc
        self._channel = channel
        return channel

    async def start(self, limit: int) -> None:
        await self._open(limit)

    async def _consume(self, channel: AbstractChannel) -> None:
        """(Re)start consuming every queue; old tags stay known for deliveries in flight."""
        raw = await channel.get_underlay_channel()
        for tag, queue in list(self._tags.items()):
            if queue:
                await raw.basic_cancel(tag)
                self._tags[tag] = ""  # cancelled; its in-flight deliveries still map below
                self._cancelled[tag] = queue
        for queue in self.queues:
            amqp_queue = await channel.get_queue(self._rabbit.name(queue), ensure=False)
            self._tags[await amqp_queue.consume(self._on_message)] = queue

    def _forget_channel(self) -> None:
        """RabbitMQ put back everything unacked on a closed channel: forget it."""
        for queue in self._unacked.values():
            self._rabbit.reserved[queue] -= 1
        self._unacked.clear()
        self._buffer.clear()
        self._tags.clear()
        self._cancelled.clear()
        self._channel = None

    async def _ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        writes: Sequence[StorageWrite],
        limit: int,
        timeout: float,
    ) -> list[Delivery]:
        if acks:
            await self._ack(acks)
        try:
            channel = await self._open(limit)
            want = len(self._unacked) - len(self._buffer) + limit
            fresh, self._unsettled = self._unsettled or want > self._prefetch, False
            if want > self._prefetch:
                await channel.set_qos(prefetch_count=want, global_=self._global_qos)
                self._prefetch = want
                if not self._global_qos:  # a per-consumer limit binds new consumers only
                    await self._consume(channel)
            return await self._take(limit, timeout, settle=fresh)
        except BrokerError:
            raise
        except Exception as exc:
            self._forget_channel()
            raise BrokerError(f"RabbitMQ at {redact_url(self.broker.url)}: {exc}") from exc

    async def _take(self, limit: int, timeout: float, *, settle: bool) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while not out:
            if not self._buffer:
                if self._channel is None or self._channel.is_closed:
                    raise BrokerError(
                        f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}"
                    )
                self._arrived.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    return out
            if settle:  # prefetch just grew: let the burst land, in priority order
                settle = False
                await self._settle_burst(limit)
            while self._buffer and len(out) < limit:
                delivery = await self._admit(self._buffer.popleft())
                if delivery is not None:
                    out.append(delivery)
        return out

    async def _settle_burst(self, limit: int) -> None:
        """Wait while deliveries keep landing (a few ms), up to ``limit`` of them."""
        for _ in range(10):
            before = len(self._buffer)
            if before >= limit:
                return
            await asyncio.sleep(0.003)
            if len(self._buffer) == before:
                return

    @staticmethod
    def _due(message: Message, ours: dict[str, Any]) -> float | None:
        """When the message may run: our header, else the ``eta`` a Celery client sent.

        Celery clients publish eta/countdown tasks straight into the queue (a
        Celery worker holds them in memory); here they go into the ladder.
        """
        not_before = ours.get(NOT_BEFORE_HEADER)
        if isinstance(not_before, int):
            return not_before / 1000
        eta = message.headers.get("eta")
        if eta is None:
            return None
        with contextlib.suppress(MessageError):  # the worker rejects a malformed eta
            return parse_timestamp(eta)
        return None

    async def _admit(self, incoming: AbstractIncomingMessage) -> Delivery | None:
        message, ours = from_incoming(incoming)
        queue = self._queue_of(incoming)
        count = int(ours.get(COUNT_HEADER, 1))
        if "x-delivery-count" in ours:  # quorum: RabbitMQ counts returned deliveries
            count += int(ours["x-delivery-count"])
            return Delivery(message, queue, count, incoming)
        due = self._due(message, ours)
        if due is not None and due > time.time():
            await self._republish(incoming, message, queue, count, due)
            return None
        if incoming.redelivered:
            count += 1
            if count <= self.options.max_deliveries:
                await self._republish(incoming, message, queue, count, None)
                return None
        return Delivery(message, queue, count, incoming)

    async def _republish(
        self,
        incoming: AbstractIncomingMessage,
        message: Message,
        queue: str,
        count: int,
        not_before: float | None,
    ) -> None:
        outgoing = Outgoing(queue, message, message.priority, not_before)
        await self._rabbit.publish_all([outgoing], {0: count})
        await self._settle(incoming)

    async def _settle(self, incoming: AbstractIncomingMessage) -> None:
        queue = self._unacked.pop(id(incoming), None)
        if queue is None:
            return  # its channel is gone: RabbitMQ has put it back already
        self._rabbit.reserved[queue] -= 1
        with contextlib.suppress(Exception):
            await incoming.ack()

    async def _ack(
        self, deliveries: Sequence[Delivery], writes: Sequence[StorageWrite] = ()
    ) -> None:
        """``writes`` never come: no result store shares RabbitMQ's storage."""
        for d in deliveries:
            await self._settle(d.tag)

    async def _release(
        self, deliveries: Sequence[Delivery], not_before: float | None, *, uncount: bool
    ) -> None:
        live = [d for d in deliveries if id(d.tag) in self._unacked]
        if not live:
            return
        batch = [Outgoing(d.queue, d.message, d.message.priority, not_before) for d in live]
        counts = {
            i: d.delivery_count if uncount else d.delivery_count + 1 for i, d in enumerate(live)
        }
        await self._rabbit.publish_all(batch, counts)
        for d in live:
            await self._settle(d.tag)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        message = delivery.message
        await self._rabbit.publish_dead(
            delivery.queue, message, b"", reason, delivery.delivery_count
        )
        await self._settle(delivery.tag)

    async def _heartbeat(self) -> None:
        """Leases need no renewal (unacked deliveries stay ours); check the channel."""
        if self._channel is not None and self._channel.is_closed:
            raise BrokerError(f"lost the channel to RabbitMQ at {redact_url(self.broker.url)}")

    def abandon(self) -> None:
        """Die as a worker would: the channel closes after ``lease_timeout``, returning all."""
        super().abandon()
        channel, self._channel = self._channel, None
        if channel is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.options.lease_timeout, lambda: loop.create_task(_close(channel)))
        for queue in self._unacked.values():
            self._rabbit.reserved[queue] -= 1
        self._unacked.clear()
        self._buffer.clear()

    async def close(self) -> None:
        """Stop the deliveries first, so what is handed back cannot come straight back."""
        channel = self._channel
        if channel is not None and not channel.is_closed and not self._closed:
            with contextlib.suppress(Exception):
                for tag, queue in list(self._tags.items()):
                    if queue:
                        await (await channel.get_underlay_channel()).basic_cancel(tag)
        await super().close()

    async def _close(self) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            self._forget_channel()
            return
        # Deliveries that arrived but were never handed out go back uncounted.
        with contextlib.suppress(Exception):
            buffered = list(self._buffer)
            self._buffer.clear()
            for incoming in buffered:
                message, ours = from_incoming(incoming)
                queue = self._queue_of(incoming)
                count = int(ours.get(COUNT_HEADER, 1))
                await self._republish(incoming, message, queue, count, None)
        with contextlib.suppress(Exception):
            await channel.close()
        self._forget_channel()


async def _close(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        await channel.close()
