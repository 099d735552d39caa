"""celeriac: a distributed task queue with Celery's API and wire protocol on an asyncio core.

from celeriac import Celeriac

app = Celeriac("shop")          # embedded SQLite broker and results

@app.task
def add(x: int, y: int) -> int:
    return x + y

add.delay(2, 2).get(timeout=10)
"""

from . import states
from ._version import __version__
from .app import Celeriac, Celery, current_app, shared_task
from .canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from .errors import (
    CeleriacError,
    ChordError,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TimeLimitExceeded,
)
from .result import AsyncResult, EagerResult, GroupResult
from .routing import Broadcast, Exchange, Queue
from .task import AsyncTask, Task

__all__ = [
    "__version__",
    "AsyncResult",
    "AsyncTask",
    "Broadcast",
    "Celeriac",
    "CeleriacError",
    "Celery",
    "chain",
    "chord",
    "ChordError",
    "chunks",
    "current_app",
    "EagerResult",
    "Exchange",
    "group",
    "GroupResult",
    "Ignore",
    "MaxRetriesExceededError",
    "Queue",
    "Reject",
    "Retry",
    "shared_task",
    "signature",
    "Signature",
    "SoftTimeLimitExceeded",
    "states",
    "Task",
    "TaskError",
    "TimeLimitExceeded",
    "xmap",
    "xstarmap",
]
