"""The thin sync facade: run one coroutine to completion from sync code.

A thread with no running event loop gets a private loop of its own,
reused for every call it makes: no thread hop, so a sync
``delay()`` costs little more than its broker round trip. A thread that is
already running a loop (sync code called from async code) cannot block on
its own loop, so its calls go to a shared portal thread instead.

Loops are reset in a forked child; ``close_all`` closes them at exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()
_loops: list[asyncio.AbstractEventLoop] = []
_loops_lock = threading.Lock()
_portal: _Portal | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on some platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        # asyncio's own loop: its run_until_complete costs ~6 us against uvloop's
        # ~22 us, and a sync call is one short run (uvloop serves long-lived loops).
        loop = asyncio.new_event_loop()
        _local.loop = loop
        with _loops_lock:
            _loops.append(loop)
    return loop


def may_block() -> bool:
    """True when the running loop is this thread's private one (see ``run_sync``).

    Its only caller is a sync call waiting for the result anyway, so a short
    blocking call made right there costs nobody, and it saves the hop to a
    worker thread and back (tens of microseconds).
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    return loop is not None and asyncio._get_running_loop() is loop


class _Portal:
    """A daemon thread running a loop, for sync calls made from async code."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="celeriac-portal", daemon=True
        )
        self.thread.start()

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine made by ``factory`` and return its result, from sync code."""
    global _portal
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _thread_loop().run_until_complete(factory())
    with _loops_lock:
        if _portal is None:
            _portal = _Portal()
        portal = _portal
    return portal.call(factory)


def run_on_every_loop(
    factory: Callable[[asyncio.AbstractEventLoop], Coroutine[Any, Any, None]],
) -> None:
    """Run ``factory(loop)`` on every loop this module made (to close connections)."""
    with _loops_lock:
        loops = [loop for loop in _loops if not loop.is_closed()]
        portal = _portal
    for loop in loops:
        if not loop.is_running():
            loop.run_until_complete(factory(loop))
    if portal is not None:
        asyncio.run_coroutine_threadsafe(factory(portal.loop), portal.loop).result(timeout=10)


def close_all() -> None:
    """Close every loop this module made (at exit, or when a test wants it)."""
    global _portal
    with _loops_lock:
        loops, _loops[:] = list(_loops), []
        portal, _portal = _portal, None
    for loop in loops:
        if not loop.is_running() and not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    if portal is not None:
        portal.stop()
    _local.__dict__.clear()


def _after_fork_in_child() -> None:
    """The parent's loops and portal thread do not exist in a forked child."""
    global _portal, _local
    _portal = None
    _loops.clear()
    _local = threading.local()


def at_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit while executor threads still take work.

    ``atexit`` is too late: by then ``concurrent.futures`` has shut its
    thread pools, and closing a connection that lives on one fails. Hooks
    registered here run before that, most recent first.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has it since 3.9
        import atexit

        atexit.register(hook)
    else:
        register(hook)


os.register_at_fork(after_in_child=_after_fork_in_child)
at_exit(close_all)
