"""One worker process: an event loop running a TaskConsumer, with signal handling.

Used as the body of each process-pool child and, for the thread, async and
solo pools, as the whole worker.

* The whole worker (``child=False``): SIGTERM or SIGINT starts a warm
  shutdown; a second one, or SIGQUIT, is a cold shutdown: the process exits
  at once and its unacked tasks are delivered again.
* A child: only the supervisor counts the user's signals. SIGTERM, however
  often it comes, means warm shutdown: a SIGTERM sent to the whole process
  group (systemd, ``kill -TERM -PGID``) reaches the child directly as well as
  forwarded by the supervisor, in either order. SIGINT (Ctrl-C reaches the
  whole group too) is ignored; SIGQUIT, which the supervisor sends on the
  user's second signal, is the cold shutdown.

``SHUTDOWN_SIGNALS`` are blocked until the event loop runs with the handlers
installed (the supervisor forks children with them blocked), so a signal that
comes earlier waits for the handlers instead of meeting the supervisor's, the
default action, or a loop that is not yet reading its signals (uvloop reads
them only while running).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from .._sync import new_event_loop
from ..signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)
from .config import WorkerConfig
from .consumer import TaskConsumer
from .node import Node

if TYPE_CHECKING:
    from ..app import Celeriac

logger = logging.getLogger("celeriac.worker")

SHUTDOWN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
"""Blocked until the loop runs with their handlers (from before the fork, in a child)."""


def build_consumer(
    app: Celeriac,
    config: WorkerConfig,
    *,
    child: bool,
    node: Node | None = None,
    slot: int = 0,
) -> TaskConsumer:
    """The consume loop of one worker process: the default middleware plus the app's."""
    return TaskConsumer(
        app,
        config.queues,
        concurrency=config.slots_per_process,
        prefetch_multiplier=config.prefetch_multiplier,
        hostname=config.hostname,
        processes=config.processes,
        max_tasks=config.max_tasks_per_child if child else None,
        max_memory_kib=config.max_memory_per_child if child else None,
        shutdown_timeout=config.shutdown_timeout,
        exit_on_hard_timeout=child,
        node=node,
        slot=slot,
        announce_ready=not child,
        beat=config.beat,
    )


def run_process(
    app: Celeriac,
    config: WorkerConfig,
    *,
    child: bool,
    node: Node | None = None,
    slot: int = 0,
) -> int:
    """Run one consuming process until it stops; return its exit code, or minus the
    signal it must end with (a child whose sync task was terminated, see
    ``TaskConsumer.terminate``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)  # until _run unblocks them
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    consumer = build_consumer(app, config, child=child, node=node, slot=slot)
    signals = 0

    def warm(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            logger.info("warm shutdown (%s)", name)
            consumer.request_stop(f"signal {name}")
            if not child:
                announce_shutdown(config.hostname, signum, cold=False)
        elif not child:  # the user's second signal
            cold(signum)
        # A child's repeated SIGTERM is the same request: the group's and the supervisor's.

    def cold(signum: int) -> None:
        logger.warning(
            "cold shutdown (%s): unacknowledged tasks will be delivered again",
            signal.Signals(signum).name,
        )
        if not child:
            announce_shutdown(config.hostname, signum, cold=True)
        os._exit(1)

    warm_signals = [signal.SIGTERM] if child else [signal.SIGTERM, signal.SIGINT]
    if child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides for its children
    for signum in warm_signals:
        loop.add_signal_handler(signum, warm, signum)
    loop.add_signal_handler(signal.SIGQUIT, cold, signal.SIGQUIT)
    try:
        reason = loop.run_until_complete(_run(app, consumer, child))
    finally:
        # A child keeps its handlers until it exits: a late SIGTERM (the group's,
        # after the work is done) must not kill it by the default action.
        if not child:
            for signum in (*warm_signals, signal.SIGQUIT):
                loop.remove_signal_handler(signum)
    logger.info("worker process %d stopped: %s", os.getpid(), reason)
    return -(consumer.exit_signal or 0)


async def _run(app: Celeriac, consumer: TaskConsumer, child: bool) -> str:
    """Consume, with the lifecycle signals around it: the worker's own (``worker_init``,
    ``worker_shutdown``) when this process is the whole worker, and each consuming
    process's (``worker_process_init``, ``worker_process_shutdown``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)  # the loop is running now
    hostname = consumer.hostname
    try:
        if not child:
            await worker_init.asend(sender=consumer)
        await worker_process_init.asend(sender=hostname)
        return await consumer.run()
    finally:
        await worker_process_shutdown.asend(sender=hostname, pid=os.getpid(), exitcode=0)
        if not child:
            await worker_shutdown.asend(sender=consumer)
        await app.aclose()


def announce_shutdown(hostname: str, signum: int, *, cold: bool) -> None:
    """``worker_shutting_down`` for the user's signal ``signum``, with Celery's arguments:
    ``sig`` its name, ``how`` Warm or Cold, ``exitcode`` 1 for a cold shutdown or Ctrl-C."""
    if worker_shutting_down.receivers:
        worker_shutting_down.send(
            sender=hostname,
            sig=signal.Signals(signum).name,
            how="Cold" if cold else "Warm",
            exitcode=1 if cold or signum == signal.SIGINT else 0,
        )
