"""Running beat: ``celeriac beat`` in the foreground, or embedded beside a worker (``-B``).

The embedded beat is a forked process of its own (:mod:`celeriac.embedded`,
shared with the embedded outbox relay) that dies with the worker's main
process, so a SIGKILLed worker leaves no beat behind (its lease lapses and
another beat takes over).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from .. import embedded as embedded_process
from .._sync import new_event_loop
from ..signals import beat_embedded_init, beat_init
from .service import Beat, beat_class

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["run_beat", "start_embedded", "stop_embedded"]

logger = logging.getLogger("celeriac.beat")


def run_beat(app: Celeriac, *, embedded: bool = False, name: str | None = None) -> int:
    """Run beat until SIGTERM or SIGINT; it gives its lease up on the way out."""
    beat = beat_class(app)(app, name)
    beat_init.send(sender=beat)
    if embedded:
        beat_embedded_init.send(sender=beat)
    loop = new_event_loop()
    try:
        loop.run_until_complete(_main(app, beat))
    finally:
        loop.close()
    return 0


async def _main(app: Celeriac, beat: Beat) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await beat.run(stopping)
    finally:
        await app.aclose()


def start_embedded(app: Celeriac) -> int:
    """Fork the embedded beat; returns its pid."""
    return embedded_process.start_embedded(
        app, lambda: run_beat(app, embedded=True), "embedded beat"
    )


def stop_embedded(pid: int) -> None:
    """SIGTERM the embedded beat and wait for it to give its lease up."""
    embedded_process.stop_embedded(pid)
