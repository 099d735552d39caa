"""The ``rpc://`` result store: results travel as AMQP messages to the callers' own queues.

URL: ``rpc://user:password@host:port/vhost`` (RabbitMQ, as the ``amqp://``
broker; ``rpc://`` alone is ``guest@127.0.0.1:5672``; ``amqp://`` and
``amqps://`` URLs mean this store too, so ``backend=`` may repeat the broker
URL), ``?prefix=`` before every name. Needs ``pip install 'celeriac[amqp]'``.

As in Celery, nothing is stored on a server: a result is a message, sent once,
to the reply queues of the clients connected at that moment. So:

* a client sees the results stored while it is connected, in this process:
  ``AsyncResult.get()`` in the process that sent the task works; ``get()``
  from a process that connected later (or restarted) never sees the result;
* ``mark_done`` and ``claim`` (chord counting) are per process: a chord whose
  header tasks run in several worker processes needs a shared store (Redis,
  PostgreSQL, SQLite);
* results are kept in this process's memory until they expire.

Names (``P`` = the prefix):

``Pceleriac.rpc``, exchange (fanout, durable): every stored state is
    published to it once, with publisher confirms.
``Pceleriac.rpc.<uuid>``, queue (exclusive, auto-delete, not durable), one per
    connected backend: the caller's own reply queue, bound to the exchange;
    it disappears with the connection. Each message carries ``x-rpc-key``
    (the result key), ``x-rpc-op`` (``set`` or ``del``), ``x-rpc-expires`` (ms,
    -1 for none), ``x-rpc-origin`` (the sending process) and ``x-rpc-seq``, and
    an AMQP ``expiration`` equal to the result's lifetime.

Within a process the backends of one URL share one table (as ``memory://``),
so threads and event loops see each other's results at once, without a round
trip; messages from the own process are skipped on arrival. The fan-out (each
result reaches every connected client) is the price of a store interface that
does not carry the caller's ``reply_to``; routing by ``reply_to`` (Celery's
layout, direct reply-to) is the planned refinement.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ..brokers.amqp import split_url
from ..brokers.base import redact_url
from ..errors import BackendError, ConfigurationError
from .memory import MemoryBackend

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

__all__ = ["RpcBackend"]

EXCHANGE = "celeriac.rpc"
ORIGIN = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
"""This process, on every message it publishes."""
_seq = itertools.count(1)
_applied: dict[tuple[str, str], tuple[str, int]] = {}
"""(url, key) -> (origin, seq) of the newest remote write applied, to drop older ones."""
_applied_lock = threading.Lock()


class RpcBackend(MemoryBackend):
    """Results fanned out over RabbitMQ to connected clients, kept in process memory."""

    scheme = "rpc"

    def __init__(self, url: str, options: Any = None):
        super().__init__(url, options)
        scheme, _, rest = url.partition("://")
        tls = scheme.lower() == "amqps"
        amqp_url = f"amqp{'s' if tls else ''}://{rest or 'guest:guest@127.0.0.1:5672//'}"
        self._driver_url, query = split_url(amqp_url)
        self.prefix = query.get("prefix", "")
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def connect(self) -> None:
        try:
            import aio_pika
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "the rpc:// result store needs aio-pika: pip install 'celeriac[amqp]'"
            ) from exc
        try:
            self._connection = await aio_pika.connect(self._driver_url, timeout=5)
            self._channel = await self._connection.channel(publisher_confirms=True)
            exchange = await self._channel.declare_exchange(
                self.prefix + EXCHANGE, "fanout", durable=True
            )
            queue = await self._channel.declare_queue(
                f"{self.prefix}{EXCHANGE}.{uuid.uuid4().hex}", exclusive=True, auto_delete=True
            )
            await queue.bind(exchange)
            await queue.consume(self._on_message, no_ack=True)
        except Exception as exc:
            await self.close()
            raise BackendError(
                f"cannot reach RabbitMQ for results at {redact_url(self.url)} ({exc}); "
                "start it with `rabbitmq-server -detached`"
            ) from exc

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = None

    async def _set(self, key: str, value: bytes, expires: float | None) -> None:
        await super()._set(key, value, expires)
        await self._send("set", key, value, expires)

    async def _delete(self, key: str) -> None:
        await super()._delete(key)
        await self._send("del", key, b"", None)

    async def _send(self, op: str, key: str, value: bytes, expires: float | None) -> None:
        if self._channel is None or self._channel.is_closed:
            raise BackendError(f"the rpc:// result store {redact_url(self.url)} is not connected")
        import aio_pika

        ms = -1 if expires is None else max(1, int(expires * 1000))
        message = aio_pika.Message(
            value,
            headers={
                "x-rpc-key": key,
                "x-rpc-op": op,
                "x-rpc-expires": ms,
                "x-rpc-origin": ORIGIN,
                "x-rpc-seq": next(_seq),
            },
            expiration=None if expires is None else expires,
        )
        exchange = await self._channel.get_exchange(self.prefix + EXCHANGE, ensure=False)
        try:
            await exchange.publish(message, "")
        except Exception as exc:
            raise BackendError(f"rpc:// result store {redact_url(self.url)}: {exc}") from exc

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        headers = incoming.headers or {}
        origin = str(headers.get("x-rpc-origin", ""))
        if origin == ORIGIN:
            return  # stored in this process's table already
        key = str(headers.get("x-rpc-key", ""))
        seq = int(headers.get("x-rpc-seq", 0))  # type: ignore[arg-type]
        with _applied_lock:
            last = _applied.get((self.url, key))
            if last is not None and last[0] == origin and last[1] >= seq:
                return  # another backend of this process applied it, or a newer one
            _applied[(self.url, key)] = (origin, seq)
        if headers.get("x-rpc-op") == "del":
            await MemoryBackend._delete(self, key)
            return
        ms = int(headers.get("x-rpc-expires", -1))  # type: ignore[arg-type]
        await MemoryBackend._set(self, key, incoming.body, None if ms < 0 else ms / 1000)
