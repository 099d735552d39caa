"""The peer writer the result-store wake-up tests start in another thread or process.

``python peer_store.py URL TASK_ID DELAY`` prints ``connected``, stores SUCCESS
for the task DELAY seconds later and prints the Unix time it began.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import ResultMeta


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
