"""Running beat: ``celeriac beat`` in the foreground, or embedded beside a worker (``-B``).

The embedded beat is a forked process of its own, as Celery's ``-B`` is with
the prefork pool: the worker's processes never share a loop or a lock with
it. It asks the kernel to SIGTERM it when the worker's main process dies, so
a SIGKILLed worker leaves no beat behind (its lease lapses and another beat
takes over).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
from typing import TYPE_CHECKING

from .._sync import new_event_loop
from ..signals import beat_embedded_init, beat_init
from .service import Beat, beat_class

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["run_beat", "start_embedded", "stop_embedded"]

logger = logging.getLogger("celeriac.beat")

_PR_SET_PDEATHSIG = 1


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
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        app.on_after_fork.send(sender=app)
        code = run_beat(app, embedded=True)
    except BaseException:
        logger.exception("embedded beat crashed")
    finally:
        os._exit(code)


def stop_embedded(pid: int) -> None:
    """SIGTERM the embedded beat and wait for it to give its lease up."""
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _die_with_parent() -> None:
    """Linux's PR_SET_PDEATHSIG: SIGTERM this process when its parent dies."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
