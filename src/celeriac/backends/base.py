"""The result-store contract: base class owns keys, encoding and waiting.

A store supplies four primitives on opaque keys and bytes, as Dramatiq's
result backends do: ``_get``, ``_set`` (with an expiry), ``_delete`` and
optionally ``_wait_changed`` (a wake-up when a key is written; the default
polls with backoff). Everything else (Celery's ``celery-task-meta-<id>``
keys, the meta layout, serialization, waiting for a ready state) is here.

Checked for every store by ``tests/conformance/test_backend.py``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import states
from ..errors import BackendError, ChordError, TimeoutError
from ..exception_codec import decode_exception, encode_exception
from ..serialization import Codec, resolve_name
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url

__all__ = ["BackendOptions", "ChordJoin", "ResultBackend", "ResultMeta", "TASK_KEY_PREFIX"]

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"
"""A saved GroupResult: the ids of its members, in order (Celery's key)."""
GROUP_MEMBERS_PREFIX = "celeriac-group-done-"
"""Members: the ids of a group's tasks that finished (chord counting)."""
CLAIM_PREFIX = "celeriac-claim-"
"""One-time claims, e.g. that a chord's body was sent."""
FENCE_PREFIX = "celeriac-fence-"
"""Stores that keep a fence beside a result rather than with it (Redis) name it so."""
FINAL_FENCE = 1 << 62
"""The fence a SUCCESS is stored with: higher than any attempt's, so nothing fenced replaces it."""


@dataclass(frozen=True, slots=True)
class BackendOptions:
    expires: float | None = 86400.0
    """Seconds a stored result is kept (None: forever)."""
    serializer: str = "json"
    accept_content: tuple[str, ...] = ("json",)
    poll_interval: float = 0.05
    """Longest wait between two looks, for stores without wake-ups."""


@dataclass(frozen=True, slots=True)
class ResultMeta:
    """What the store holds for one task, in Celery's layout."""

    task_id: str
    status: str
    result: Any = None
    traceback: str | None = None
    children: list[Any] = field(default_factory=list)
    date_done: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Extended fields (name, args, kwargs, worker, retries, queue) when stored."""

    @property
    def ready(self) -> bool:
        return self.status in states.READY_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "result": self.result,
            "traceback": self.traceback,
            "children": self.children,
            "date_done": self.date_done,
            "task_id": self.task_id,
            **self.extra,
        }

    @classmethod
    def of_error(
        cls, task_id: str, status: str, exc: BaseException, traceback: str | None = None
    ) -> ResultMeta:
        """A ready ``status`` (FAILURE, REJECTED) whose result is ``exc``, done now."""
        return cls(task_id, status, encode_exception(exc), traceback, date_done=utcnow_iso())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultMeta:
        known = {"status", "result", "traceback", "children", "date_done", "task_id"}
        return cls(
            task_id=str(data["task_id"]),
            status=str(data["status"]),
            result=data.get("result"),
            traceback=data.get("traceback"),
            children=list(data.get("children") or []),
            date_done=data.get("date_done"),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class Changed:
    """A key's new value, as a store's wake-up delivered it (``_wait_changed``)."""

    value: bytes | None


@dataclass(frozen=True, slots=True)
class ChordJoin:
    """What the one call that completed a chord gets back (``chord_part_return``).

    ``values`` are the header's results in group order, for the body; when a
    header task failed (or a result is missing), ``error`` says why the body
    must fail instead, as Celery words it.
    """

    group_id: str
    values: list[Any]
    error: ChordError | None = None
    token: str = ""
    """The caller's hold on the chord, for stores that lease it (``hold_chord``)."""

    @classmethod
    def of(
        cls, group_id: str, parts: Sequence[tuple[str, ResultMeta | None]], token: str = ""
    ) -> ChordJoin:
        """The join of ``(task id, final meta)`` pairs in group order: the values, or the
        error of the first part that did not succeed."""
        for task_id, meta in parts:
            if meta is None or meta.status != states.SUCCESS:
                return cls(group_id, [], _part_error(group_id, task_id, meta), token)
        return cls(group_id, [meta.result for _, meta in parts if meta is not None], None, token)


def _part_error(group_id: str, task_id: str, meta: ResultMeta | None) -> ChordError:
    if meta is None or meta.status not in states.PROPAGATE_STATES:
        return ChordError(f"chord {group_id}: no result for {task_id}")
    cause = decode_exception(meta.result, meta.traceback)
    error = ChordError(f"Dependency {task_id} raised {cause!r}")
    error.__cause__ = cause
    return error


def _fence_of(meta: ResultMeta, fence: int | None) -> int | None:
    return fence if fence is None or meta.status != states.SUCCESS else FINAL_FENCE


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat()


class ResultBackend(ABC):
    """A result store reached by URL. One instance per process and event loop."""

    scheme: str = ""

    @classmethod
    def reply_queue_for(cls, url: str) -> str | None:
        """What tasks sent by this process carry as ``reply_to`` for a store at ``url``:
        the queue it receives results on (``rpc://``); None for stores that are read."""
        return None

    storage: str | None = None
    """The database this store writes to, named so that a broker in the same one can
    make its writes (see ``celeriac.shared_storage``); None: no broker can."""

    def __init__(self, url: str, options: BackendOptions | None = None):
        self.url = url
        self.options = options or BackendOptions()
        self._codec = Codec(self.options.accept_content)
        self._serializer = resolve_name(self.options.serializer)
        self._content_type = self._serializer.content_type

    @staticmethod
    def key_for(task_id: str) -> str:
        return TASK_KEY_PREFIX + task_id

    async def store(
        self,
        meta: ResultMeta,
        *,
        keep_for: float | None = None,
        reply_to: str | None = None,
        fence: int | None = None,
    ) -> None:
        """Store ``meta``; it expires after ``keep_for`` seconds, else ``result_expires``.

        Every state expires, as in Celery's Redis layout: a PENDING marker for
        a task that never runs (purged, dead-lettered) must not live forever.
        ``reply_to`` is the task message's: a store that sends results to
        their callers (``rpc://``) sends it there; others store it only.

        ``fence`` orders the writes of a task's attempts (a worker passes its
        delivery's, see ``celeriac.worker.middleware.results``): a fenced write
        is made only if the stored state has no higher fence, and a SUCCESS is
        stored with ``FINAL_FENCE``. So a worker whose lease lapsed cannot
        overwrite what the attempt that took over stored, and a SUCCESS never
        regresses. A write without a fence is always made.
        """
        expires = keep_for if keep_for is not None else self.options.expires
        key, value = self.key_for(meta.task_id), self._encode(meta)
        await self._set(key, value, expires, _fence_of(meta, fence))

    def store_writes(self, meta: ResultMeta, *, fence: int | None = None) -> list[StorageWrite]:
        """``store(meta, fence=fence)`` as writes for a broker on the same
        ``storage`` to make (a worker's consumer makes them with the task's ack).

        Only called when ``storage`` is not None.
        """
        key, value = self.key_for(meta.task_id), self._encode(meta)
        return self._set_writes(key, value, self.options.expires, _fence_of(meta, fence))

    async def store_many(
        self, metas: Sequence[ResultMeta], *, keep_for: float | None = None
    ) -> None:
        """Store several metas in one round trip where the store can."""
        expires = keep_for if keep_for is not None else self.options.expires
        await self._set_many([(self.key_for(m.task_id), self._encode(m)) for m in metas], expires)

    async def store_pending(self, pending: Sequence[tuple[str, float | None]]) -> None:
        """Record PENDING for tasks being sent, never over a state already stored.

        ``pending`` holds ``(task_id, keep_for)`` pairs; a ``keep_for`` of None
        means ``result_expires``. Set-if-absent, so the marker may be written
        at the same time as the message is published: a worker that already
        stored SUCCESS keeps it.
        """
        await self._add_many(self._pending_items(pending))

    def pending_writes(self, pending: Sequence[tuple[str, float | None]]) -> list[StorageWrite]:
        """``store_pending`` as writes for a broker on the same ``storage`` to make.

        Only called when ``storage`` is not None.
        """
        return self._add_writes(self._pending_items(pending))

    def _pending_items(
        self, pending: Sequence[tuple[str, float | None]]
    ) -> list[tuple[str, bytes, float | None]]:
        default = self.options.expires
        return [
            (
                self.key_for(task_id),
                self._encode(ResultMeta(task_id, states.PENDING)),
                default if keep_for is None else keep_for,
            )
            for task_id, keep_for in pending
        ]

    def _encode(self, meta: ResultMeta) -> bytes:
        return self._serializer.encode(meta.to_dict())

    async def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        """Remember a group's member ids, in order, as Celery's ``GroupResult.save()`` does."""
        layout = {"result": [[group_id, None], [[[i, None], None] for i in task_ids]]}
        data = self._serializer.encode(layout)
        await self._set(GROUP_KEY_PREFIX + group_id, data, self.options.expires)

    async def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids of a saved group, or None."""
        raw = await self._get(GROUP_KEY_PREFIX + group_id)
        if raw is None:
            return None
        try:
            layout = self._codec.loads(raw, self._content_type)
            return [str(member[0][0]) for member in layout["result"][1]]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"saved group {group_id} is malformed: {exc}") from exc

    async def forget_group(self, group_id: str) -> None:
        await self._delete(GROUP_KEY_PREFIX + group_id)

    async def get_many(self, task_ids: Sequence[str]) -> list[ResultMeta | None]:
        """Metas of several tasks, in order (stores may override to batch the reads)."""
        return [await self.get(task_id) for task_id in task_ids]

    async def mark_done(self, group_id: str, task_id: str) -> int:
        """Record that ``task_id`` of group ``group_id`` finished; return how many have.

        Counts distinct task ids, atomically: a task delivered twice (at least
        once allows it) counts once, and concurrent calls never lose a count.
        """
        return await self._add_member(
            GROUP_MEMBERS_PREFIX + group_id, task_id, self.options.expires
        )

    async def claim(self, name: str) -> bool:
        """True for exactly one caller per ``name`` until it expires (fire a chord body once)."""
        return await self._add(CLAIM_PREFIX + name, b"", self.options.expires)

    async def set_chord_size(self, group_id: str, size: int) -> None:  # noqa: B027 - optional
        """Before a chord's header is sent: how many header results complete it.

        Stores that speak Celery's chord protocol (Redis) keep it, as Celery's
        client does; the others count to the length of the saved group.
        """

    async def chord_part_return(
        self, group_id: str, group_index: int | None, meta: ResultMeta
    ) -> ChordJoin | None:
        """Record the final ``meta`` of the header task at ``group_index`` of chord
        ``group_id``; return the join to the one call that completed the chord
        (it sends or fails the body), None to every other call.

        A duplicate (the same task delivered twice) never counts twice, and at
        most one call gets a join. Here (stores with their own mechanism): a
        success marks its id done and the call that brings the count to the
        saved group's length claims the chord and reads the members' results; a
        failure claims the chord at once, so the body fails without waiting.
        """
        if meta.status != states.SUCCESS:
            if not await self.claim(f"chord-{group_id}"):
                return None
            return ChordJoin(group_id, [], _part_error(group_id, meta.task_id, meta))
        done = await self.mark_done(group_id, meta.task_id)
        ids = await self.restore_group(group_id)
        if ids is not None and done < len(ids):
            return None
        if not await self.claim(f"chord-{group_id}"):
            return None
        if ids is None:
            return ChordJoin(group_id, [], ChordError(f"chord {group_id}: its group was not saved"))
        return ChordJoin.of(group_id, list(zip(ids, await self.get_many(ids), strict=True)))

    async def hold_chord(self, join: ChordJoin) -> bool:
        """Right before the body of ``join`` is sent: True if the caller still holds
        the chord (it must not send otherwise). Stores whose claims are leases
        renew it here; a claim that never lapses is always still held."""
        return True

    async def release_chord(self, join: ChordJoin) -> None:  # noqa: B027 - optional
        """The body of ``join`` was sent or failed: the chord is over, so a late
        duplicate of a header task can never complete it again."""

    async def get(self, task_id: str) -> ResultMeta | None:
        """The stored meta, or None when the store has never seen the id."""
        return self._decode(task_id, await self._get(self.key_for(task_id)))

    def _decode(self, task_id: str, raw: bytes | None) -> ResultMeta | None:
        if raw is None:
            return None
        try:
            data = self._codec.loads(raw, self._content_type)
            return ResultMeta.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise BackendError(f"stored result of {task_id} is malformed: {exc}") from exc

    async def forget(self, task_id: str) -> None:
        await self._delete(self.key_for(task_id))

    async def wait(
        self, task_id: str, timeout: float | None, interval: float | None = None
    ) -> ResultMeta:
        """Wait until the task is in a ready state; raise TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        key = self.key_for(task_id)
        cap = interval if interval is not None else self.options.poll_interval
        poll = min(0.0005, cap)
        raw = await self._get(key)
        while True:
            meta = self._decode(task_id, raw)
            if meta is not None and meta.ready:
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"the result of task {task_id} was not ready within {timeout}s")
            changed = await self._wait_changed(
                key, raw, remaining, poll if remaining is None else min(poll, remaining)
            )
            raw = changed.value if changed is not None else await self._get(key)
            poll = min(poll * 2, cap)

    async def _wait_changed(
        self, key: str, seen: bytes | None, timeout: float | None, poll: float
    ) -> Changed | None:
        """Return when ``key`` may no longer hold ``seen`` (what was just read), or by
        ``timeout``; with the new value when the store already has it (it is not
        read again), else None.

        The default sleeps ``poll`` seconds (the base doubles it up to the
        poll interval); stores with wake-ups wait for one instead.
        """
        await asyncio.sleep(poll)
        return None

    @abstractmethod
    async def connect(self) -> None:
        """Reach the store, or raise BackendError naming the URL and the fix."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _set(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> None:
        """Set ``key``; with a ``fence``, only if the stored value's fence is not
        higher (a value stored without one counts as lower), atomically."""

    @abstractmethod
    async def _delete(self, key: str) -> None: ...

    async def _set_many(self, items: Sequence[tuple[str, bytes]], expires: float | None) -> None:
        """Several ``_set`` calls; stores override this to make it one round trip."""
        for key, value in items:
            await self._set(key, value, expires)

    @abstractmethod
    async def _add_member(self, key: str, member: str, expires: float | None) -> int:
        """Add ``member`` to the set at ``key`` (atomically); return the set's size."""

    @abstractmethod
    async def _add(self, key: str, value: bytes, expires: float | None) -> bool:
        """Set ``key`` only if absent (or expired); True only for the call that did."""

    async def _add_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Several ``_add`` calls (key, value, expiry); stores make it one round trip."""
        for key, value, expires in items:
            await self._add(key, value, expires)

    def _set_writes(
        self, key: str, value: bytes, expires: float | None, fence: int | None = None
    ) -> list[StorageWrite]:
        """``_set`` as writes in the storage's terms; stores with a ``storage`` supply it."""
        raise NotImplementedError(f"{type(self).__name__} has no storage a broker can share")

    def _add_writes(self, items: Sequence[tuple[str, bytes, float | None]]) -> list[StorageWrite]:
        """``_add_many`` as writes in the storage's terms; stores with a ``storage`` supply it."""
        raise NotImplementedError(f"{type(self).__name__} has no storage a broker can share")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact_url(self.url)}>"
