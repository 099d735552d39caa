"""Services a worker runs beside itself as forked processes: beat (``worker -B``) and the
outbox relay (``worker --outbox-relay``).

Each is a process of its own, as Celery's ``-B`` is with the prefork pool: the
worker's processes never share a loop or a lock with it. The child asks the
kernel to SIGTERM it when the worker's main process dies (Linux's
PR_SET_PDEATHSIG), so a SIGKILLed worker leaves nothing behind: the
service's lease lapses, or its lock's session ends, and another takes over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Celeriac

__all__ = ["start_embedded", "stop_embedded"]

logger = logging.getLogger("celeriac")

_PR_SET_PDEATHSIG = 1


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
