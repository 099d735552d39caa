"""The outbox relay: publishes the rows ``app.transaction(conn)`` committed to the outbox.

``celeriac outbox-relay`` (or ``worker --outbox-relay``) takes the committed
rows of ``celeriac_outbox`` (:mod:`.outbox`) in id order, a batch of
``outbox_batch_size`` at a time, publishes them to the app's broker with
:func:`celeriac.sending.publish` (PENDING recorded, the broker's confirm
awaited, ``after_task_publish`` and task-sent events as for any send), and
deletes them only after that publish returned. A relay killed between the two
publishes the batch again: at least once, and the copy has the same task id.
Every relayed message carries the :data:`RELAYED_HEADER` header, so a worker
can recognise such a copy (``celeriac.worker.middleware.relayed``).

One relay publishes at a time per outbox, so batches go out in order and a
duplicate is at most the one batch a killed relay was publishing:

* PostgreSQL: a connection of the relay's own holds a session-level
  ``pg_try_advisory_lock`` while it leads; other relays stand by and try again
  every ``outbox_poll_interval``. A dead leader's session ends and frees the
  lock. The leader LISTENs on :func:`.outbox.channel` (notified at each commit)
  and also looks every ``outbox_poll_interval``.
* SQLite: each batch is one ``BEGIN IMMEDIATE`` .. ``COMMIT`` around select,
  publish and delete: the write lock lets one relay in at a time, for as long
  as one publish. An empty outbox is seen without the lock; it is looked at
  every ``outbox_poll_interval`` (SQLite cannot notify).

A broker that cannot take the publish leaves the rows where they are: one
log line, then retries with backoff (and one line when it works again). A row
that is not a message (garbage written by hand, a truncated value) goes to
the broker's dead-letter store with a log line and is deleted; the relay goes
on with the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import embedded
from ..brokers.message_columns import Row
from ..errors import ConfigurationError, MessageError, SerializationError
from ..protocol import Outgoing
from ..sending import App, publish
from ..url_schemes import redact_url
from .outbox import dialect_of, outgoing_of
from .outbox_readers import Outbox, PostgresOutbox, SqliteOutbox

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = [
    "RELAYED_HEADER",
    "OutboxRelay",
    "RelayStats",
    "relayed",
    "run_relay",
    "start_embedded_relay",
]

logger = logging.getLogger("celeriac.relay")

RELAYED_HEADER = "celeriac_relayed"
"""The header (value True) the relay adds to each message it publishes."""
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
"""Seconds between tries while the broker or the outbox fails; the last repeats."""


@dataclass(slots=True)
class RelayStats:
    """``statistics()`` of a relay."""

    published: int = 0
    dead_lettered: int = 0
    batches: int = 0
    leading: bool = False
    """Whether this relay publishes (False: another relay holds the outbox's lock)."""
    last_error: str | None = None


class _PublishFailed(Exception):
    """The broker refused a batch: the rows stay in the outbox."""


def relayed(columns: Row) -> Outgoing:
    """The message of an outbox row (its :data:`.outbox.COLUMNS`), marked as relayed;
    MessageError if the row holds no message."""
    outgoing = outgoing_of(columns)
    queue, priority, not_before = outgoing.queue, outgoing.priority, outgoing.not_before
    if not isinstance(queue, str) or not queue:
        raise MessageError(f"queue is {queue!r}, not a name")
    if not isinstance(priority, int):
        raise MessageError(f"priority is {priority!r}, not an integer")
    if not_before is not None and not isinstance(not_before, int | float):
        raise MessageError(f"not_before is {not_before!r}, not a time")
    message = outgoing.message
    _id, _task = message.id, message.task  # each raises MessageError when missing
    headers = {**message.headers, RELAYED_HEADER: True}
    return Outgoing(queue, replace(message, headers=headers), priority, not_before)


class OutboxRelay:
    """Publishes one outbox's committed rows (``outbox_url``, or ``url``) to ``app``'s broker."""

    def __init__(self, app: App, url: str | None = None):
        url = url or app.conf.outbox_url
        if not url:
            raise ConfigurationError(
                "the outbox relay needs outbox_url: the application's database "
                "(postgresql://... or sqlite:///...) that app.transaction() writes to"
            )
        self.app = app
        self.url = url
        self.batch_size = max(1, app.conf.outbox_batch_size)
        self.poll_interval = max(0.01, app.conf.outbox_poll_interval)
        self.stats = RelayStats()
        self._said_leading: bool | None = None
        if dialect_of(url) == "postgresql":
            self._outbox: Outbox = PostgresOutbox(url)
        else:
            self._outbox = SqliteOutbox(url)
            _refuse_same_sqlite_file(url, app.conf.broker_url)

    def statistics(self) -> RelayStats:
        return self.stats

    async def run(self, stopping: asyncio.Event) -> None:
        """Relay until ``stopping`` is set; failures are logged and retried, never raised."""
        failures, failing = 0, ""
        try:
            while not stopping.is_set():
                try:
                    await self._step(stopping)
                except _PublishFailed as exc:
                    failures, failing = await self._failed(stopping, failures, failing, exc)
                except Exception as exc:
                    await self._outbox.close()
                    failures, failing = await self._failed(stopping, failures, failing, exc)
                else:
                    if failures:
                        logger.info("outbox relay: relaying again after %d failed tries", failures)
                        failures, failing = 0, ""
                        self.stats.last_error = None
        finally:
            await self._outbox.close()

    async def drain(self) -> int:
        """Publish every row committed so far, then return how many rows were taken:
        a relay for one go (a deploy step, a cron job, a test). Errors are raised. When
        another relay leads (PostgreSQL), that one publishes them, and this returns 0."""
        taken = 0
        try:
            if not await self._outbox.lead():
                return 0
            self.stats.leading = True
            while True:
                try:
                    n = await self._outbox.take(self.batch_size, self._publish)
                except _PublishFailed as exc:
                    raise exc.__cause__ or exc from None
                taken += n
                if n < self.batch_size:
                    return taken
        finally:
            await self._outbox.close()

    async def _step(self, stopping: asyncio.Event) -> None:
        """Publish while there are rows, then wait for a commit or the poll interval."""
        leading = await self._outbox.lead()
        if leading != self._said_leading:
            self._said_leading = self.stats.leading = leading
            if leading:
                logger.info("outbox relay leads %s", redact_url(self.url))
            else:
                logger.info("outbox relay standing by: another publishes %s", redact_url(self.url))
        if not leading:
            await _until(stopping, asyncio.sleep(self.poll_interval))
            return
        while not stopping.is_set():
            if await self._outbox.take(self.batch_size, self._publish) < self.batch_size:
                break
        await _until(stopping, self._outbox.wait(self.poll_interval))

    async def _failed(
        self, stopping: asyncio.Event, failures: int, failing: str, exc: BaseException
    ) -> tuple[int, str]:
        """Log a failure (once per kind of failure in a row), then back off."""
        cause = exc.__cause__ if isinstance(exc, _PublishFailed) and exc.__cause__ else exc
        if isinstance(exc, _PublishFailed):
            kind = (
                f"cannot publish outbox rows to {self.app.connections().broker!r}"
                ": the rows stay in the outbox"
            )
        else:
            kind = f"cannot read the outbox in {redact_url(self.url)}"
        delay = BACKOFF[min(failures, len(BACKOFF) - 1)] * random.uniform(0.8, 1.2)
        self.stats.last_error = f"{type(cause).__name__}: {cause}"
        if kind != failing:
            logger.error("%s (%s); retrying with backoff", kind, self.stats.last_error)
        else:
            logger.debug("%s (%s); retrying in %.2fs", kind, self.stats.last_error, delay)
        await _until(stopping, asyncio.sleep(delay))
        return failures + 1, kind

    async def _publish(self, rows: Sequence[Row]) -> None:
        """Publish the messages of ``rows`` (``id`` first, then ``COLUMNS``) in order, and
        dead-letter those that are none; ``_PublishFailed`` if the broker refused."""
        batch: list[Outgoing] = []
        garbage: list[tuple[Row, Exception]] = []
        for row in rows:
            try:
                batch.append(relayed(row[1:]))
            except (MessageError, SerializationError, TypeError, ValueError) as exc:
                garbage.append((row, exc))
        try:
            if batch:
                await publish(self.app, batch)
            for row, why in garbage:
                await self._dead_letter(row, why)
        except Exception as exc:
            raise _PublishFailed(str(exc)) from exc
        self.stats.batches += 1
        self.stats.published += len(batch)
        self.stats.dead_lettered += len(garbage)

    async def _dead_letter(self, row: Row, exc: Exception) -> None:
        queue = row[1] if isinstance(row[1], str) and row[1] else self.app.conf.task_default_queue
        raw = b"\n".join(_as_bytes(column) for column in row[4:])
        reason = f"outbox row {row[0]} is not a message: {exc}"
        broker = await self.app.connections().abroker()
        await broker.dead_letter_raw(queue, raw, reason)
        logger.error("dead-lettered %s (queue %r)", reason, queue)


def _refuse_same_sqlite_file(outbox_url: str, broker_url: str | None) -> None:
    """The SQLite relay publishes while it holds the outbox file's write lock: a SQLite
    broker in that same file could never take the publish."""
    from ..sqlite.url import parse_sqlite_url

    same = (
        broker_url is not None
        and broker_url.startswith("sqlite://")
        and parse_sqlite_url(broker_url)[0] == parse_sqlite_url(outbox_url)[0]
    )
    if same:
        raise ConfigurationError(
            "outbox_url and the SQLite broker name the same file, which the relay could "
            "not publish into while it holds the outbox's write lock: give the broker a "
            "file of its own"
        )


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode(errors="replace")


async def _until(stopping: asyncio.Event, awaitable: Awaitable[None]) -> None:
    """``awaitable``, cut short (cancelled) when ``stopping`` is set first."""
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    if not work.cancelled():
        work.result()


def run_relay(app: Celeriac) -> int:
    """Run the relay of ``app``'s outbox until SIGTERM or SIGINT (``celeriac outbox-relay``)."""
    relay = OutboxRelay(app)
    logger.info(
        "outbox relay: %s -> %s, %d rows per publish",
        redact_url(relay.url),
        redact_url(app.broker_url),
        relay.batch_size,
    )
    try:
        return embedded.run_service(app, relay.run)
    finally:
        logger.info("outbox relay stopped: %d published", relay.stats.published)


def start_embedded_relay(app: Celeriac) -> int:
    """Fork the relay beside a worker (``worker --outbox-relay``); returns its pid. A
    missing ``outbox_url`` raises here, before the fork."""
    OutboxRelay(app)
    return embedded.start_embedded(app, lambda: run_relay(app), "embedded outbox relay")
