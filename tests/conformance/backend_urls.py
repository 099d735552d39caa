"""The result stores the conformance suite runs against: one entry each.

Also the peer writer the wake-up tests start in another thread or process:
``python backend_urls.py URL TASK_ID DELAY`` prints ``connected``, stores
SUCCESS for the task DELAY seconds later and prints the Unix time it began.

A store that needs a server gets an entry whose ``make_url`` calls
``pytest.skip`` when the server is absent, e.g. for Redis::

    StoreCase("redis", _redis_url_or_skip, peer="process")

and every test in ``test_backend.py`` then runs against it unchanged.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultMeta


@dataclass(frozen=True, slots=True)
class StoreCase:
    name: str
    make_url: Callable[[Path], str]
    """A fresh, empty store's URL, given the test's ``tmp_path``; may skip the test."""
    peer: Literal["thread", "process"]
    """The farthest writer sharing the store: another thread's event loop, or another process."""


def _memory_url(tmp_path: Path) -> str:
    return f"memory://conformance-{uuid.uuid4().hex}"


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


STORES: list[StoreCase] = [
    StoreCase("memory", _memory_url, peer="thread"),
    StoreCase("sqlite", _sqlite_url, peer="process"),
]


async def store_after(
    url: str, task_id: str, delay: float, connected: Callable[[], object] = lambda: None
) -> float:
    """Connect to ``url``, call ``connected``, store SUCCESS (result 7) after ``delay``.

    Returns the Unix time the store began.
    """
    backend = backend_from_url(url)
    await backend.connect()
    try:
        connected()
        await asyncio.sleep(delay)
        began = time.time()
        await backend.store(ResultMeta(task_id, states.SUCCESS, result=7))
        await asyncio.sleep(0.3)  # so only the store, not the peer's exit, can wake a waiter
    finally:
        await backend.close()
    return began


if __name__ == "__main__":
    url, task_id, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    began = asyncio.run(store_after(url, task_id, delay, lambda: print("connected", flush=True)))
    print(began)
