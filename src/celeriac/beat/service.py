"""The beat service: whoever holds the lease sends the due ticks; every other beat stands by.

Each step claims the lease (``celeriac.brokers.beat_store``): a renewal for
the leader, a try for the others. The leader then sends the ticks that are
due in one publish, with the record of them in the same transaction where
the broker's storage allows it (SQLite, Redis), else just after (RabbitMQ),
and sleeps until the next tick, a renewal, or ``beat_max_loop_interval``,
whichever is first. It sends only while its lease has at least half its
time left, so a leader that stalls stops sending before anyone else may
start. A broker that cannot be reached costs the lease, never the process:
the step is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from ..brokers.beat_store import BeatStore, Lease
from ..errors import CeleriacError, ConfigurationError
from ..protocol import Outgoing
from ..schedules.base import app_zone
from ..sending import SendOptions, publish
from .entries import Entry, entries_from, tick_id
from .plan import CatchUp, plan

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["Beat", "beat_class", "beat_name"]

logger = logging.getLogger("celeriac.beat")


def beat_name() -> str:
    """This process's name as a lease holder: host, pid, and a random part (pids recur)."""
    return f"beat@{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


def beat_class(app: Celeriac) -> type[Beat]:
    """``beat_scheduler``'s class, or :class:`Beat`."""
    chosen = app.conf.beat_scheduler
    if chosen is None:
        return Beat
    if isinstance(chosen, type) and issubclass(chosen, Beat):
        return chosen
    raise ConfigurationError(
        f"setting 'beat_scheduler' takes a subclass of celeriac.beat.Beat, not {chosen!r} "
        "(Celery's schedulers, django_celery_beat's too, run only on Celery's beat; "
        "see docs/periodic-tasks.md)"
    )


class Beat:
    """Sends an app's periodic tasks while it holds the broker's beat lease."""

    def __init__(self, app: Celeriac, name: str | None = None) -> None:
        self.app = app
        self.name = name or beat_name()
        conf = app.conf
        self.entries: list[Entry] = self.load_entries()
        self.ttl = float(conf.beat_lease_ttl)
        self.catch_up = cast(CatchUp, conf.beat_catch_up)  # one of three: settings check it
        self.zone = app_zone(app)
        self.lease: Lease | None = None
        self.runs: dict[str, float] = {}
        self.sent = 0
        self._unreachable = False

    def load_entries(self) -> list[Entry]:
        """The entries to send: ``beat_schedule``'s. Called at start and whenever this beat
        becomes the leader; a subclass named by ``beat_scheduler`` may read them from
        elsewhere (a database), keeping the lease and the stored last runs."""
        return entries_from(self.app.conf.beat_schedule)

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "leader": self.lease is not None,
            "token": self.lease.token if self.lease else None,
            "sent": self.sent,
            "entries": len(self.entries),
        }

    async def run(self, stopping: asyncio.Event) -> None:
        """Lead or stand by until ``stopping`` is set; then give the lease up."""
        logger.info("beat %s: starting with %d entries", self.name, len(self.entries))
        store: BeatStore | None = None
        try:
            while not stopping.is_set():
                if store is None:
                    store = await self._store()
                delay = await self._step(store) if store is not None else self.ttl / 4
                with suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
        finally:
            if store is not None and self.lease is not None:
                with suppress(CeleriacError, OSError):
                    await store.release(self.lease)
                logger.info("beat %s: gave up the lease", self.name)
            self.lease = None

    async def _store(self) -> BeatStore | None:
        try:
            broker = await self.app.abroker()
        except (CeleriacError, OSError) as exc:
            self._unreached(exc)
            return None
        return broker.beat_store()

    async def _step(self, store: BeatStore) -> float:
        """One claim and, when leading, one send; returns seconds until the next step."""
        renew = self.ttl / 4
        try:
            lease = await store.claim(self.name, self.ttl)
            if lease is None:
                if self.lease is not None:
                    logger.warning("beat %s: another beat took the lease", self.name)
                self.lease = None
                return renew
            catch_up: CatchUp = "all"
            if self.lease is None or lease.token != self.lease.token:
                self.runs = await store.last_runs()
                self.entries = self.load_entries()
                catch_up = self._catch_up(lease)
                logger.info("beat %s: leading (token %d)", self.name, lease.token)
            self.lease = lease
            wake = await self._send_due(store, lease, catch_up)
        except (CeleriacError, OSError) as exc:
            self._unreached(exc)
            self.lease = None
            return renew
        if self._unreachable:
            logger.info("beat %s: the broker is back", self.name)
            self._unreachable = False
        left = wake - time.time()
        return max(0.0, min(left, renew, float(self.app.conf.beat_max_loop_interval)))

    def _catch_up(self, lease: Lease) -> CatchUp:
        """A hand-over sends every missed tick; a fleet that was down, ``beat_catch_up``."""
        if lease.idle_since is None or time.time() - lease.idle_since <= self.ttl:
            return "all"
        return self.catch_up

    async def _send_due(self, store: BeatStore, lease: Lease, catch_up: CatchUp) -> float:
        todo = plan(self.entries, self.runs, time.time(), self.zone, catch_up)
        if not todo.runs:
            return todo.wake
        if time.monotonic() > lease.until - self.ttl / 2:
            return time.time()  # the claim took too long to act on: renew first
        batch = []
        for entry, tick in todo.due:
            try:
                batch.append(self._outgoing(entry, tick))
            except (CeleriacError, TypeError, ValueError) as exc:
                logger.error("beat: cannot send %s (%s): %s", entry.name, entry.task, exc)
            else:
                logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        if batch and store.shares_publish:  # the ticks and their record in one transaction
            await publish(self.app, batch, writes=store.record_writes(lease, todo.runs))
        else:
            if batch:
                await publish(self.app, batch)
            if not await store.record(lease, todo.runs):
                logger.warning("beat %s: fenced out; another beat leads", self.name)
                self.lease = None
                return time.time()
        self.sent += len(batch)
        self.runs.update(todo.runs)
        return todo.wake

    def _outgoing(self, entry: Entry, tick: float) -> Outgoing:
        args, kwargs = entry.call_args()
        options = dict(entry.options)
        options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True}
        options["task_id"] = tick_id(entry.name, tick)
        opts = SendOptions.from_kwargs(options)
        return self.app.build_outgoing(
            entry.task, args, kwargs, opts, self.app.tasks.get(entry.task)
        )

    def _unreached(self, exc: BaseException) -> None:
        if not self._unreachable:
            logger.warning("beat %s: cannot reach the broker (%s); trying again", self.name, exc)
            self._unreachable = True
