"""The Redis result store (``redis://``, ``rediss://``): Celery's own Redis layout.

URL: as the Redis broker's (:mod:`celeriac.redis.url`); ``?prefix=`` (or
``global_keyprefix``) goes before every key and channel, as Celery's
``result_backend_transport_options = {"global_keyprefix": ...}`` does.

Keys (``P`` = the prefix, empty by default, so Celery reads and writes the same
results):

``P celery-task-meta-<task id>``, STRING: the encoded meta (JSON by default:
    ``status, result, traceback, children, date_done, task_id``, Celery's
    layout). Written by ``SET ... PX`` (Celery uses ``SETEX``; milliseconds
    allow sub-second expiries) and ``PUBLISH`` of the same value on the channel
    of the same name, in one script call (atomic, like the ``MULTI`` of
    Celery's Redis backend), so Celery's result consumers wake too. Lifetime: every state
    expires, by default ``result_expires`` (one day) after its last write.
``P celeriac-fence-<task id>``, STRING: the fence of the last fenced write of
    the task's meta (``ResultBackend.store``), written with it by one script
    (``FENCED_SET`` in ``celeriac.redis.writes``) with the same expiry; an
    unfenced write deletes it. A fenced write is skipped while the meta
    exists with a higher fence here.
``P celery-taskset-meta-<group id>``, STRING: a saved group (same write).
``P celeriac-group-done-<group id>``, SET of task ids: the group's finished
    tasks (chord counting): ``SADD`` + ``SCARD`` + ``PEXPIRE`` in one
    ``MULTI``. Lifetime: ``result_expires`` after the last addition.
``P celeriac-claim-<name>``, STRING (empty): a one-time claim, ``SET NX PX``.
    Lifetime: ``result_expires``.
``P celery-taskset-meta-<group id>.s/.j/.d/.t/.c``: a chord's size, header
    results, recorded parts, size adjustment and send claim, Celery's own
    (:mod:`celeriac.redis.chords`), so Celery and celeriac clients and workers
    complete each other's chords.

Waiting: one pub/sub connection per store object, shared by every waiter. A
waiter subscribes to its key's channel (waiters of the same key share the
subscription), and once Redis confirms it, reads the key once more: a write
that landed between the base class's read and the subscription is not
missed. A published value wakes the waiters of its key and is handed back to
each (``Changed``), which then skips its GET. If the pub/sub connection
drops, every waiter wakes and reads again. Waits never poll, except for a
read every ``RECHECK`` seconds as a safety net.

Connections: a bounded pool (callers wait for a free connection), plus the
pub/sub connection, opened when the first waiter needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from ..backends.base import (
    FENCE_PREFIX,
    BackendOptions,
    Changed,
    ChordJoin,
    ResultBackend,
    ResultMeta,
)
from ..errors import BackendError, ConfigurationError
from ..shared_storage import StorageWrite
from .chords import (
    CLAIM_SECONDS,
    CLEANUP,
    DONE_SECONDS,
    EXTEND,
    PART_RETURN,
    SEND_SECONDS,
    chord_keys,
)
from .connection import open_pool, storage_name
from .errors import driver_errors
from .kombu_layout import split_layout
from .writes import FENCED_SET, MAKE_WRITES, write_args

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.connection import AbstractConnection
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the Redis result store needs the redis driver: pip install 'celeriac[redis]'"
    ) from exc

__all__ = ["RedisBackend"]

RECHECK = 5.0
"""Longest wait on pub/sub before a waiter reads its key again anyway."""


@dataclass(slots=True, eq=False)
class _Channel:
    """The waiters of one key, and whether Redis has confirmed the subscription."""

    confirmed: asyncio.Future[None]
    waiters: set[asyncio.Future[bytes | None]] = field(default_factory=set)


class _Subscriptions:
    """One pub/sub connection: SUBSCRIBE/UNSUBSCRIBE in call order, one reader task."""

    def __init__(self, backend: RedisBackend):
        self._backend = backend
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[bytes, _Channel] = {}
        self._unconfirmed: dict[bytes, int] = {}
        """SUBSCRIBEs sent per channel whose confirmation has not come yet."""
        self._outbox: list[tuple[str, bytes]] = []

    async def join(self, channel: bytes) -> tuple[_Channel, asyncio.Future[bytes | None]]:
        """A future the next message on ``channel`` resolves (None: connection lost)."""
        if self._conn is None:
            pool = self._backend._pool
            conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
            with self._backend._errors():
                await conn.connect()  # type: ignore[no-untyped-call]
            if self._conn is None:
                self._conn = conn
                self._reader = asyncio.create_task(self._read(conn))
            else:
                await conn.disconnect()
        entry = self._channels.get(channel)
        if entry is None:
            entry = _Channel(asyncio.get_running_loop().create_future())
            self._channels[channel] = entry
            self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
            self._send("SUBSCRIBE", channel)
        waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        entry.waiters.add(waiter)
        return entry, waiter

    def leave(self, channel: bytes, waiter: asyncio.Future[bytes | None]) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.waiters.discard(waiter)
        if not entry.waiters:
            del self._channels[channel]
            if self._conn is not None:
                self._send("UNSUBSCRIBE", channel)

    def _send(self, command: str, channel: bytes) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((command, channel))

    def _flush(self) -> None:
        """Send the queued commands in order, consecutive ones of a kind as one command."""
        outbox, self._outbox = self._outbox, []
        conn = self._conn
        if conn is None or not outbox:
            return
        commands: list[tuple[str, list[bytes]]] = []
        for command, channel in outbox:
            if commands and commands[-1][0] == command:
                commands[-1][1].append(channel)
            else:
                commands.append((command, [channel]))
        packed = conn.pack_commands([(command, *channels) for command, channels in commands])
        asyncio.get_running_loop().create_task(self._write(conn, packed))

    async def _write(self, conn: AbstractConnection, packed: list[bytes]) -> None:
        try:
            await conn.send_packed_command(packed, check_health=False)
        except (redis_errors.RedisError, OSError):
            self._lost(conn)

    async def _read(self, conn: AbstractConnection) -> None:
        try:
            while True:
                reply = await conn.read_response()
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind, channel = reply[0], reply[1]
                if kind == b"message":
                    entry = self._channels.get(channel)
                    for waiter in entry.waiters if entry else ():
                        if not waiter.done():
                            waiter.set_result(reply[2])
                elif kind == b"subscribe":
                    left = self._unconfirmed.get(channel, 1) - 1
                    if left > 0:
                        self._unconfirmed[channel] = left
                        continue
                    self._unconfirmed.pop(channel, None)
                    entry = self._channels.get(channel)
                    if entry is not None and not entry.confirmed.done():
                        entry.confirmed.set_result(None)
        except (redis_errors.RedisError, OSError):
            self._lost(conn)

    def _lost(self, conn: AbstractConnection) -> None:
        """The connection dropped: wake every waiter (they read again) and start afresh."""
        if self._conn is not conn:
            return
        self._conn = None
        channels, self._channels = self._channels, {}
        self._unconfirmed.clear()
        self._outbox.clear()
        for entry in channels.values():
            if not entry.confirmed.done():
                entry.confirmed.set_result(None)
            for waiter in entry.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        asyncio.get_running_loop().create_task(conn.disconnect())

    async def close(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if conn is not None:
            await conn.disconnect()


class RedisBackend(ResultBackend):
    """Results in Redis, in Celery's key layout: see the module docstring."""

    scheme = "redis"

    def __init__(self, url: str, options: BackendOptions | None = None):
        super().__init__(url, options)
        # One URL may serve a kombu-layout broker too: its options are not the store's.
        self._pool, self._prefix = open_pool(split_layout(url)[0], blocking=True)
        self.storage = storage_name(self._pool)
        self._client: aioredis.Redis = aioredis.Redis(connection_pool=self._pool)
        self._make_writes = self._client.register_script(MAKE_WRITES)
        self._part_return = self._client.register_script(PART_RETURN)
        self._extend = self._client.register_script(EXTEND)
        self._cleanup = self._client.register_script(CLEANUP)
        self._subscriptions = _Subscriptions(self)
        self._members: list[tuple[str, str, int | None, asyncio.Future[int]]] = []
        self._members_task: asyncio.Task[None] | None = None
        self._errors = functools.partial(
            driver_errors, "Redis result store", url, BackendError, BackendError
        )
        """redis-py's exceptions as BackendError, naming the URL (password hidden)."""

    async def connect(self) -> None:
        with self._errors():
            await self._client.ping()

    async def close(self) -> None:
        await self._subscriptions.close()
        await self._client.aclose(close_connection_pool=True)

    async def _get(self, key: str) -> bytes | None:
        with self._errors():
            return cast(bytes | None, await self._client.get(self._prefix + key))

    async def _set(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> None:
        await self._write(self._set_writes(key, value, expires, fence))

    def _set_writes(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> list[StorageWrite]:
        """SET, and PUBLISH the value to the key's waiters (Celery's layout); with
        a fence, ``FENCED_SET``, which keeps the fence in a key beside the value."""
        name, fence_name = self._prefix + key, self._prefix + FENCE_PREFIX + key
        if fence is not None:
            ms = _ms(expires)
            args = [name, fence_name, value, fence, "" if ms is None else ms]
            return [StorageWrite(FENCED_SET, args)]
        return [
            _set(name, value, expires),
            StorageWrite("DEL", [fence_name]),
            StorageWrite("PUBLISH", [name, value]),
        ]

    async def _write(self, writes: Sequence[StorageWrite]) -> None:
        """``writes`` in one script call: atomic as a ``MULTI``, and about 40 µs
        cheaper for redis-py's asyncio client."""
        with self._errors():
            await self._make_writes(keys=[], args=write_args(writes))

    async def _delete(self, key: str) -> None:
        with self._errors():
            await self._client.delete(self._prefix + key)

    async def _add_member(self, key: str, member: str, expires: float | None) -> int:
        """Queued, and sent with the others queued meanwhile in one MULTI, in call order.

        A pool would run concurrent calls on several connections in any order;
        the queue keeps the counts in the order of the calls, as one connection would.
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._members.append((self._prefix + key, member, _ms(expires), future))
        if self._members_task is None or self._members_task.done():
            self._members_task = asyncio.create_task(self._send_members())
        return await future

    async def _send_members(self) -> None:
        while self._members:
            batch, self._members = self._members, []
            try:
                with self._errors():
                    async with self._client.pipeline(transaction=True) as pipe:
                        for name, member, ms, _ in batch:
                            pipe.sadd(name, member)
                            pipe.scard(name)
                            if ms is not None:
                                pipe.pexpire(name, ms)
                        replies = iter(await pipe.execute())
            except BackendError as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, _, ms, future in batch:
                next(replies)
                count = int(next(replies))
                if ms is not None:
                    next(replies)
                if not future.done():
                    future.set_result(count)

    async def _add(self, key: str, value: bytes, expires: float | None) -> bool:
        with self._errors():
            return bool(await self._client.set(self._prefix + key, value, nx=True, px=_ms(expires)))

    async def _add_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """One script call; no PUBLISH, since nobody waits for a PENDING marker."""
        await self._write(self._add_writes(items))

    def _add_writes(self, items: Sequence[tuple[str, bytes, float | None]]) -> list[StorageWrite]:
        return [_set(self._prefix + key, value, expires, "NX") for key, value, expires in items]

    async def set_chord_size(self, group_id: str, size: int) -> None:
        """``.s``, as Celery's client sets it: a re-sent frozen chord is a new run."""
        keys = chord_keys(self._prefix, group_id)
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(keys["c"])
                pipe.set(keys["s"], size, ex=self._seconds() or None)
                await pipe.execute()

    async def chord_part_return(
        self, group_id: str, group_index: int | None, meta: ResultMeta
    ) -> ChordJoin | None:
        """Celery's ``on_chord_part_return``: the part goes into ``.j``, and the part that
        completes the chord (a failure included) claims it and reads ``.j`` in order."""
        keys = chord_keys(self._prefix, group_id)
        token = uuid.uuid4().hex
        part = self._serializer.encode([1, meta.task_id, meta.status, meta.result])
        score = "+inf" if group_index is None else group_index
        expires = self._seconds()
        with self._errors():
            ready, diff, size, claimed = await self._part_return(
                keys=[keys["j"], keys["t"], keys["s"], keys["d"], keys[""], keys["c"]],
                args=[meta.task_id, part, 1, score, expires, expires, CLAIM_SECONDS, token],
            )
        if ready == -1 or not size or not claimed:
            return None
        if int(ready) != int(size) + int(diff or 0):
            return None
        with self._errors():
            raw = cast(list[bytes], await self._client.zrange(keys["j"], 0, -1))
        parts = [self._chord_part(group_id, item) for item in raw]
        return ChordJoin.of(group_id, [(m.task_id, m) for m in parts], token)

    def _chord_part(self, group_id: str, raw: bytes) -> ResultMeta:
        try:
            _, task_id, status, result = self._codec.loads(raw, self._content_type)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"a header result of chord {group_id} is malformed: {exc}") from exc
        return ResultMeta(str(task_id), str(status), result)

    async def hold_chord(self, join: ChordJoin) -> bool:
        keys = chord_keys(self._prefix, join.group_id)
        with self._errors():
            return bool(
                await self._extend(keys=[keys["c"], keys["s"]], args=[join.token, SEND_SECONDS])
            )

    async def release_chord(self, join: ChordJoin) -> None:
        """Sent: Celery's cleanup (keys deleted, ``.c`` = ``done``); failed: ``.s``
        deleted, as Celery does, so a late duplicate cannot fail the body again."""
        keys = chord_keys(self._prefix, join.group_id)
        with self._errors():
            if join.error is not None:
                await self._client.delete(keys["s"])
                return
            await self._cleanup(
                keys=[keys["c"], keys["j"], keys["t"], keys["s"], keys["d"]],
                args=[join.token, DONE_SECONDS],
            )

    def _seconds(self) -> int:
        """``result_expires`` in whole seconds, 0 for none (Celery's chord expiry)."""
        expires = self.options.expires
        return 0 if expires is None else max(int(expires), 1)

    async def _wait_changed(
        self, key: str, seen: bytes | None, timeout: float | None, poll: float
    ) -> Changed | None:
        """Return once ``key`` is written (pub/sub), with the value published, or by
        ``timeout``; ``poll`` is not used."""
        name = self._prefix + key
        channel = name.encode()
        entry, waiter = await self._subscriptions.join(channel)
        try:
            async with asyncio.timeout(RECHECK if timeout is None else min(timeout, RECHECK)):
                await asyncio.shield(entry.confirmed)
                with self._errors():
                    now = cast(bytes | None, await self._client.get(name))
                if now != seen:  # written between the read and the subscription
                    return Changed(now)
                published = await waiter
                if published is not None:
                    return Changed(published)
        except TimeoutError:
            pass
        finally:
            self._subscriptions.leave(channel, waiter)
        return None


def _set(name: str, value: bytes, expires: float | None, *flags: str) -> StorageWrite:
    """``SET name value [flags] [PX ms]``."""
    ms = _ms(expires)
    return StorageWrite(
        "SET", [name, value, *flags] if ms is None else [name, value, *flags, "PX", ms]
    )


def _ms(seconds: float | None) -> int | None:
    """An expiry in whole milliseconds (at least 1), or None for none."""
    return None if seconds is None else max(int(seconds * 1000), 1)
