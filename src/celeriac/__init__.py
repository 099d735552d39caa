"""celeriac: a distributed task queue with Celery's API and wire protocol on an asyncio core.

from celeriac import Celeriac

app = Celeriac("shop")          # embedded SQLite broker and results

@app.task
def add(x: int, y: int) -> int:
    return x + y

add.delay(2, 2).get(timeout=10)
"""

from . import states
from .app import Celeriac, Celery, current_app, shared_task
from .canvas import Signature, signature
from .errors import (
    CeleriacError,
    Ignore,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TimeLimitExceeded,
)
from .result import AsyncResult, EagerResult
from .task import AsyncTask, Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "AsyncTask",
    "Celeriac",
    "CeleriacError",
    "Celery",
    "EagerResult",
    "Ignore",
    "MaxRetriesExceededError",
    "Reject",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TimeLimitExceeded",
    "__version__",
    "current_app",
    "shared_task",
    "signature",
    "states",
]
