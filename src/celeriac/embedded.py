"""Services a worker runs beside itself as forked processes: beat (``worker -B``) and the
outbox relay (``worker --outbox-relay``).

Each is a process of its own, as Celery's ``-B`` is with the prefork pool: the
worker's processes never share a loop or a lock with it. The child asks the
kernel to SIGTERM it when the worker's main process dies (Linux's
PR_SET_PDEATHSIG), so a SIGKILLed worker leaves nothing behind: the
service's lease lapses, or its lock's session ends, and another takes over.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._sync import new_event_loop

if TYPE_CHECKING:
    from .app import Celeriac

__all__ = ["run_service", "start_embedded", "stop_embedded"]

logger = logging.getLogger("celeriac")

_PR_SET_PDEATHSIG = 1


def run_service(app: Celeriac, serve: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``serve(stopping)`` on a loop of its own until SIGTERM or SIGINT sets
    ``stopping`` and it returns (``celeriac beat``, ``celeriac outbox-relay``, and each
    embedded in a worker); the app's connections are closed on the way out. Exit code 0."""

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        try:
            await serve(stopping)
        finally:
            await app.aclose()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


def start_embedded(app: Celeriac, run: Callable[[], int], what: str) -> int:
    """Fork a child that runs ``run`` (its return value is the child's exit code) and dies
    with this process; returns the child's pid. ``what`` names it in a crash's log line."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        app.on_after_fork.send(sender=app)
        code = run()
    except BaseException:
        logger.exception("%s crashed", what)
    finally:
        os._exit(code)


def stop_embedded(pid: int) -> None:
    """SIGTERM the child and wait for it to finish its shutdown (give a lease up, close)."""
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
