"""The consume loop of one worker process: fetch, run through the hooks, settle.

It knows the middleware hooks, not the features behind them. Warm shutdown
(``request_stop``): stop fetching, let running tasks finish within
``shutdown_timeout``, hand deliveries that never started back to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import states
from ..brokers.base import Broker, Consumer, Delivery
from ..errors import BrokerError, TimeLimitExceeded
from ..execution import Outcome
from .context import WorkerContext
from .executor import Executor
from .job import Job, Undeliverable, decode_job
from .middleware import Defer, Middleware, Skip, middleware_for
from .middleware.base import with_own
from .node import Node
from .process_state import ProcessState
from .revokes import TERMINATED_BY, Revokes

if TYPE_CHECKING:
    from ..app import Celeriac

logger = logging.getLogger("celeriac.worker")

__all__ = ["ConsumerStats", "TaskConsumer"]

FETCH_TIMEOUT = 0.5
HARD_LIMIT_GRACE = 3.0
"""Seconds past a task's hard time limit before the supervisor kills its process."""


@dataclass(slots=True)
class ConsumerStats:
    """``statistics()`` of a consume loop."""

    pid: int = field(default_factory=os.getpid)
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    running: int = 0
    broker_ok: bool = True
    last_error: str | None = None


class TaskConsumer:
    def __init__(
        self,
        app: Celeriac,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        prefetch_multiplier: int = 1,
        hostname: str = "celeriac",
        processes: int = 1,
        middleware: list[Middleware] | None = None,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
        shutdown_timeout: float = 30.0,
        exit_on_hard_timeout: bool = False,
        node: Node | None = None,
        slot: int = 0,
        announce_ready: bool = False,
        beat: bool = False,
    ):
        self.app = app
        self.queues = list(queues)
        self.concurrency = max(1, concurrency)
        self.capacity = self.concurrency * max(1, prefetch_multiplier)
        self.node = node or Node(hostname, 1)
        self.slot = slot
        self.node.occupy(slot)
        self.ctx = WorkerContext(
            app, app.codec, hostname, self.concurrency, processes, self.node, slot, beat
        )
        self.ctx.state = ProcessState(
            self.queues, self.request_stop, task_events=app.conf.worker_send_task_events
        )
        self.middleware = middleware_for(app) if middleware is None else middleware
        self._before = with_own(self.middleware, "before_task")
        self._started = with_own(self.middleware, "task_started")
        self._after = with_own(self.middleware, "after_task")
        self._on_dead_letter = with_own(self.middleware, "dead_lettered")
        self.max_tasks = max_tasks
        self.announce_ready = announce_ready
        self._receiving: Consumer | None = None
        """The broker consumer last started (``Consumer.start``)."""
        self.max_memory_kib = max_memory_kib
        self.shutdown_timeout = shutdown_timeout
        self.exit_on_hard_timeout = exit_on_hard_timeout
        self.stats = ConsumerStats()
        self._executor = Executor(self.concurrency)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._consumers: list[Consumer] = []
        """Open broker consumers: the one fetching last; earlier ones settle what they fetched."""
        self._retiring: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stop_reason = "stopped"
        self.exit_signal: int | None = None
        """The signal this process ends with once stopped (``terminate``), if any."""

    @property
    def hostname(self) -> str:
        """The worker's node name (``celeriac@host``), as Celery's worker has it."""
        return self.ctx.hostname

    def statistics(self) -> ConsumerStats:
        self.stats.running = len(self._inflight)
        return self.stats

    def request_stop(self, reason: str = "stopped") -> None:
        """Begin a warm shutdown; safe to call from any thread."""
        self.stop_reason = reason
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stopping.set()
        else:
            loop.call_soon_threadsafe(self._stopping.set)

    async def run(self) -> str:
        """Consume until stopped; return why it stopped."""
        self._loop = asyncio.get_running_loop()
        self.ctx.connections = self.app.connections()
        consumer = self._open_consumer(await self.ctx.connections.abroker())
        voice_backend = self.ctx.connections.abackend if self.ctx.is_voice else None
        self.ctx.revokes = Revokes(consumer.broker.operations, self, backend=voice_backend)
        await self.ctx.revokes.start()
        for mw in self.middleware:
            await mw.startup(self.ctx)
        try:
            await self._consume(consumer)
        finally:
            await self._drain()
            for mw in self.middleware:
                with contextlib.suppress(Exception):
                    await mw.shutdown(self.ctx)
            await self.ctx.revokes.close()
        return self.stop_reason

    def running(self) -> list[Job]:
        """The jobs running in this process now."""
        return self._executor.running()

    def terminate(self, task_id: str, signum: int) -> bool:
        """Stop the running task ``task_id`` (a revoke with ``terminate=True``): it is
        reported REVOKED at once. A process-pool child running a sync task then stops
        and ends with ``signum`` (``exit_signal``): its thread cannot be killed, and
        the supervisor starts a fresh child. False if the task does not run here."""
        job = self._executor.terminate(task_id)
        if job is None:
            return False
        job.extras[TERMINATED_BY] = signum
        if self.exit_on_hard_timeout and not job.task.is_async:
            self.exit_signal = signum
            self.request_stop(f"{job.name}[{job.id}] terminated: ending with signal {signum}")
        return True

    def _open_consumer(self, broker: Broker) -> Consumer:
        name = f"{self.ctx.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        consumer = broker.consumer(self.queues, name)
        consumer.on_dead_letter = self._dead_lettered
        self._consumers.append(consumer)
        self.ctx.state.consumed(consumer.queues)
        return consumer

    def _follow_queues(self, consumer: Consumer) -> Consumer:
        """The queues changed (``add_consumer``/``cancel_consumer``): a new broker consumer
        fetches from the new set; the old one stops fetching, keeps its leases alive while
        the deliveries it fetched run, settles them, and closes once they are done."""
        retiring = set(self._inflight)
        new = self._open_consumer(consumer.broker)

        async def retire() -> None:
            if retiring:
                await asyncio.wait(retiring)
            self._consumers.remove(consumer)
            await consumer.close()

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return new

    async def _consume(self, consumer: Consumer) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            if consumer.queues != tuple(self.queues):
                if not self.queues:  # consuming nothing until a queue is added
                    self.ctx.state.consumed(())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), FETCH_TIMEOUT)
                    continue
                consumer = self._follow_queues(consumer)
            room = self.capacity - len(self._inflight)
            if room <= 0:
                await asyncio.wait(
                    self._inflight, timeout=FETCH_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
                )
                continue
            try:
                if consumer is not self._receiving:
                    await consumer.start(room)
                    self._consuming(consumer)
                deliveries = await consumer.fetch(room, FETCH_TIMEOUT)
            except BrokerError as exc:
                self._broker_down(exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 30.0)
                continue
            if not self.stats.broker_ok:
                logger.warning("broker %r reachable again; consuming", consumer.broker)
                self.stats.broker_ok, self.stats.last_error = True, None
            backoff = 0.1
            for delivery in deliveries:
                task = asyncio.get_running_loop().create_task(self._handle(consumer, delivery))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    def _consuming(self, consumer: Consumer) -> None:
        """``consumer`` takes messages now: the node's slot is ready (the supervisor says
        so once every child is); a one-process worker says so itself."""
        first = self._receiving is None
        self._receiving = consumer
        if first:
            self.node.mark_ready(self.slot)
            if self.announce_ready:
                logger.info("%s ready: consuming %s", self.ctx.hostname, ", ".join(self.queues))

    def _broker_down(self, exc: BaseException, backoff: float) -> None:
        self.stats.broker_ok = False
        self.stats.last_error = str(exc)
        logger.error("cannot consume from the broker (%s); retrying in ~%.1fs", exc, backoff)

    async def _drain(self) -> None:
        if self._inflight:
            logger.info(
                "warm shutdown: waiting up to %ss for %d task(s)",
                self.shutdown_timeout,
                len(self._inflight),
            )
            _, pending = await asyncio.wait(self._inflight, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
        for task in list(self._retiring):
            task.cancel()
        for consumer in list(self._consumers):
            with contextlib.suppress(Exception):
                await consumer.close()
        self._executor.shutdown(wait=False)

    async def _handle(self, consumer: Consumer, delivery: Delivery) -> None:
        """One delivery: decode, the before hooks, run, the after hooks, settle."""
        try:
            job = decode_job(self.app, self.ctx.codec, delivery, self.ctx.hostname)
        except Undeliverable as exc:
            await self._undeliverable(consumer, delivery, exc)
            return
        try:
            outcome = await self._start(consumer, job)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._failed_before(consumer, job)
            return
        if outcome is None:
            return
        try:
            for mw in self._after:
                outcome = await mw.after_task(self.ctx, job, outcome)
            await self._settle(consumer, job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._failed_after(consumer, job)

    async def _undeliverable(
        self, consumer: Consumer, delivery: Delivery, exc: Undeliverable
    ) -> None:
        self.stats.dead_lettered += 1
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        await consumer.dead_letter(delivery, str(exc), cause)

    async def _failed_before(self, consumer: Consumer, job: Job) -> None:
        """The worker failed before the task ran: it is delivered again."""
        logger.exception(
            "worker error before running %s[%s]; it will be delivered again", job.name, job.id
        )
        with contextlib.suppress(Exception):
            await consumer.requeue(job.delivery, delay=1.0)

    async def _failed_after(self, consumer: Consumer, job: Job) -> None:
        """The worker failed after the task ran: handing it back would run it again."""
        logger.exception(
            "worker error after %s[%s] ran; acknowledged, not run again", job.name, job.id
        )
        if job.task.acks_late:
            with contextlib.suppress(Exception):
                await consumer.ack(job.delivery)

    async def _dead_lettered(
        self, delivery: Delivery, reason: str, cause: BaseException | None
    ) -> None:
        for mw in self._on_dead_letter:
            try:
                await mw.dead_lettered(self.ctx, delivery, reason, cause)
            except Exception:
                logger.exception("%s failed on a dead letter", type(mw).__name__)

    async def _start(self, consumer: Consumer, job: Job) -> Outcome | None:
        """Run the task (or take a middleware's decision instead); None: handed back."""
        decision: Skip | Defer | None = None
        for mw in self._before:
            decision = await mw.before_task(self.ctx, job)
            if decision is not None:
                break
        if isinstance(decision, Defer):
            await consumer.requeue(job.delivery, decision.delay, count=False)
            return None
        if isinstance(decision, Skip):
            return await self._skipped(consumer, job, decision.outcome)
        self.ctx.state.reserved[job.id] = job
        waited = self._slots.locked()
        try:
            started = await self._take_slot()
        finally:
            self.ctx.state.reserved.pop(job.id, None)
        if not started:  # prefetched, never started: hand it back
            await consumer.requeue(job.delivery, count=False)
            return None
        if waited and (refused := self.ctx.revokes.refused(job)) is not None:
            self._slots.release()  # revoked while it waited for the slot
            return await self._skipped(consumer, job, refused)
        try:
            return await self._run(consumer, job)
        finally:
            self._slots.release()

    async def _skipped(self, consumer: Consumer, job: Job, outcome: Outcome) -> Outcome:
        """A task settled without running: with ``acks_late=False`` it was never
        acknowledged, so it is now; otherwise its ack goes with the outcome."""
        if not job.task.acks_late:
            await consumer.ack(job.delivery)
        return outcome

    async def _take_slot(self) -> bool:
        """Wait for a free task slot; False if a stop comes first.

        A prefetched delivery waiting for a slot goes back to the broker as
        soon as a warm shutdown begins, not once a running task ends.
        """
        if self._stopping.is_set():
            return False
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return True
        slot = asyncio.ensure_future(self._slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((slot, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not slot.done():
                slot.cancel()
        if slot.cancelled() or not slot.done():
            return False
        if self._stopping.is_set():
            self._slots.release()
            return False
        return True

    async def _run(self, consumer: Consumer, job: Job) -> Outcome:
        if not job.task.acks_late:  # at most once: acknowledged before it runs
            await consumer.ack(job.delivery)
            await consumer.flush_acks()
        for mw in self._started:
            await mw.task_started(self.ctx, job)
        self.node.task_started(self.slot)
        self.ctx.state.begin(job)
        try:
            return await self._executor.run(job, self._set_deadline)
        finally:
            self.ctx.state.end(job)
            self.node.task_done(self.slot)

    def _set_deadline(self, deadline: float) -> None:
        self.node.set_deadline(self.slot, deadline + HARD_LIMIT_GRACE if deadline else 0.0)

    async def _settle(self, consumer: Consumer, job: Job, outcome: Outcome) -> None:
        stats = self.stats
        stats.processed += 1
        if outcome.state == states.SUCCESS:
            stats.succeeded += 1
        elif outcome.state == states.FAILURE:
            stats.failed += 1
        elif outcome.state == states.RETRY:
            stats.retried += 1
        if outcome.state == states.REJECTED and outcome.requeue:
            await consumer.requeue(job.delivery)
        elif outcome.state == states.REJECTED:
            reason = f"rejected by the task: {outcome.exc}"
            await consumer.dead_letter(job.delivery, reason, outcome.exc)
        elif job.task.acks_late:
            await consumer.ack(job.delivery, outcome.ack_writes)
        if (
            isinstance(outcome.exc, TimeLimitExceeded)
            and self.exit_on_hard_timeout
            and not job.task.is_async
        ):
            await consumer.flush_acks()
            self.request_stop(
                "hard time limit: the task's thread cannot be stopped, replacing the process"
            )
        elif self.max_tasks is not None and stats.processed >= self.max_tasks:
            self.request_stop(f"max_tasks_per_child={self.max_tasks} reached")
        elif self.max_memory_kib is not None and _maxrss_kib() > self.max_memory_kib:
            self.request_stop(f"max_memory_per_child={self.max_memory_kib} KiB exceeded")


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
