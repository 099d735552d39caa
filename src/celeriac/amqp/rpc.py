"""The ``rpc://`` result store: results travel as AMQP messages to the caller's own queue.

URL: ``rpc://user:password@host:port/vhost`` (RabbitMQ, as the ``amqp://``
broker; ``rpc://`` alone is ``guest@127.0.0.1:5672``; ``amqp://`` and
``amqps://`` URLs mean this store too, so ``backend=`` may repeat the broker
URL), ``?prefix=`` before the reply queue's name. Needs
``pip install 'celeriac[amqp]'``.

Celery's layout, so Celery clients and workers interoperate with celeriac's:

* Each client process has one reply queue per URL, named by a random UUID
  (``?prefix=`` before it): not durable, auto-deleted with its last
  consumer, ``x-expires`` = ``result_expires``. Every task the process sends
  carries that name as its ``reply_to`` property (Celery's ``oid``).
* A worker sends every state it stores for a task (STARTED, SUCCESS,
  FAILURE, RETRY, REJECTED) to the task's ``reply_to`` through the default
  exchange, with publisher confirms: a transient message whose body is the
  result meta (``task_id``, ``status``, ``result``, ``traceback``,
  ``children``, ...) in the result serializer, ``correlation_id`` = the task
  id. A task without ``reply_to`` has nowhere to go: its result is kept only
  in the worker's own process.
* The client keeps what arrives in process memory (the memory store's
  table, keyed by URL, so threads and event loops of one process share it)
  until it expires. A ready state is never replaced by a later-arriving
  earlier one.

As in Celery, nothing is stored on a server: a result is a message, sent once.
So ``AsyncResult.get()`` works in the process that sent the task, and a
process that did not send it never sees it; ``mark_done`` and ``claim``
(chord counting) are per process, so a chord whose header tasks run in
several worker processes needs a shared store (Redis, PostgreSQL, SQLite).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

from .. import states
from ..backends.base import ResultMeta
from ..backends.memory import MemoryBackend
from ..errors import BackendError, ConfigurationError, SerializationError
from ..url_schemes import redact_url
from .wire import open_connection, split_url

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

__all__ = ["RpcBackend"]

logger = logging.getLogger("celeriac.backends.rpc")

ORIGIN_HEADER = "x-celeriac-origin"
FENCE_HEADER = "x-celeriac-fence"
"""The fence of the write a result message carries (``ResultBackend.store``)."""
"""The sending process, on every result message: a process skips its own."""
_origin = ""
_reply_queues: dict[str, str] = {}
"""URL -> this process's reply queue (both made again after a fork)."""


def _this_process() -> str:
    global _origin
    pid = str(os.getpid())
    if not _origin.startswith(pid + "-"):
        _origin = f"{pid}-{uuid.uuid4().hex[:12]}"
        _reply_queues.clear()
    return _origin


class RpcBackend(MemoryBackend):
    """Results sent over RabbitMQ to each caller's reply queue, kept in process memory."""

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

    @classmethod
    def reply_queue_for(cls, url: str) -> str:
        """This process's reply queue for ``url``: what its tasks carry as ``reply_to``."""
        _this_process()
        if url not in _reply_queues:
            prefix = split_url(url.replace("rpc://", "amqp://", 1))[1].get("prefix", "")
            _reply_queues[url] = f"{prefix}{uuid.uuid4()}"
        return _reply_queues[url]

    async def connect(self) -> None:
        try:
            import aio_pika  # noqa: F401 - only to say what is missing, before connecting
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "the rpc:// result store needs aio-pika: pip install 'celeriac[amqp]'"
            ) from exc
        expires = self.options.expires
        arguments: dict[str, Any] = {}
        if expires is not None:
            arguments["x-expires"] = max(1, int(expires * 1000))
        try:
            self._connection = await open_connection(self._driver_url)
            self._channel = await self._connection.channel(publisher_confirms=True)
            queue = await self._channel.declare_queue(
                self.reply_queue_for(self.url),
                durable=False,
                auto_delete=True,
                arguments=arguments,
            )
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

    async def store(
        self,
        meta: ResultMeta,
        *,
        keep_for: float | None = None,
        reply_to: str | None = None,
        fence: int | None = None,
    ) -> None:
        """Kept here and sent to ``reply_to`` with its fence, which the caller's
        store honours as this one does."""
        await super().store(meta, keep_for=keep_for, fence=fence)
        if reply_to:
            await self._send(meta, reply_to, fence)

    async def _send(self, meta: ResultMeta, reply_to: str, fence: int | None) -> None:
        if self._channel is None or self._channel.is_closed:
            raise BackendError(f"the rpc:// result store {redact_url(self.url)} is not connected")
        import aio_pika

        message = aio_pika.Message(
            self._encode(meta),
            content_type=self._content_type,
            content_encoding="utf-8" if self._content_type.endswith("json") else "binary",
            correlation_id=meta.task_id,
            headers={ORIGIN_HEADER: _this_process()}
            if fence is None
            else {ORIGIN_HEADER: _this_process(), FENCE_HEADER: fence},
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        )
        try:
            await self._channel.default_exchange.publish(message, routing_key=reply_to)
        except Exception as exc:
            raise BackendError(f"rpc:// result store {redact_url(self.url)}: {exc}") from exc

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        headers = incoming.headers or {}
        if headers.get(ORIGIN_HEADER) == _this_process():
            return  # stored in this process's table already
        try:
            meta = ResultMeta.from_dict(
                self._codec.loads(incoming.body, incoming.content_type or self._content_type)
            )
        except (SerializationError, KeyError, TypeError, ValueError) as exc:
            logger.warning("ignored a malformed result message on %s: %s", self.url, exc)
            return
        if meta.status not in states.READY_STATES:
            current = await self.get(meta.task_id)
            if current is not None and current.status in states.READY_STATES:
                return  # an earlier state arriving late
        fence = headers.get(FENCE_HEADER)
        await super().store(meta, fence=fence if isinstance(fence, int) else None)
