"""One worker process: an event loop running a TaskConsumer, with signal handling.

Used as the body of each process-pool child and, for the thread, async and
solo pools, as the whole worker. SIGTERM (and SIGINT where this process owns
the terminal) starts a warm shutdown; a second one, or SIGQUIT, is a cold
shutdown: the process exits at once and its unacked tasks are delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._sync import new_event_loop
from .config import WorkerConfig
from .consumer import TaskConsumer

if TYPE_CHECKING:
    from ..app import Celeriac

logger = logging.getLogger("celeriac.worker")


def build_consumer(
    app: Celeriac,
    config: WorkerConfig,
    *,
    child: bool,
    on_deadline: Callable[[float], None] | None = None,
) -> TaskConsumer:
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
        on_deadline=on_deadline,
    )


def run_process(
    app: Celeriac,
    config: WorkerConfig,
    *,
    child: bool,
    on_deadline: Callable[[float], None] | None = None,
) -> int:
    """Run one consuming process until it stops; return its exit code."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    consumer = build_consumer(app, config, child=child, on_deadline=on_deadline)
    warm_signals = [signal.SIGTERM] if child else [signal.SIGTERM, signal.SIGINT]
    if child:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides for its children
    state = {"signals": 0}

    def on_signal(signum: int) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            logger.warning(
                "cold shutdown (%s): unacknowledged tasks will be delivered again",
                signal.Signals(signum).name,
            )
            os._exit(1)
        logger.info("warm shutdown (%s)", signal.Signals(signum).name)
        consumer.request_stop(f"signal {signal.Signals(signum).name}")

    for signum in warm_signals:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGQUIT, lambda: os._exit(1))
    if not child:
        logger.info("%s ready: consuming %s", config.hostname, ", ".join(config.queues))
    try:
        reason = loop.run_until_complete(_run(app, consumer))
    finally:
        for signum in (*warm_signals, signal.SIGQUIT):
            loop.remove_signal_handler(signum)
    logger.info("worker process %d stopped: %s", os.getpid(), reason)
    return 0


async def _run(app: Celeriac, consumer: TaskConsumer) -> str:
    try:
        return await consumer.run()
    finally:
        await app.aclose()
