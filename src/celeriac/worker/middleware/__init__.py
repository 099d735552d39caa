"""Worker features, one small module each. The default list, in hook order:

before_task: Expiry -> WorkerLost -> RateLimits;
after_task:  Retries -> Results -> Chords -> Callbacks -> TaskLog
(a retry is decided before the state is stored; a chord counts a header
task only once its result is stored; callbacks fire after).
"""

from __future__ import annotations

from .base import Defer, Middleware, Skip
from .callbacks import Callbacks
from .chords import Chords
from .expiry import Expiry
from .logs import TaskLog
from .rate_limits import RateLimits
from .results import Results
from .retries import Retries
from .worker_lost import WorkerLost


def default_middleware() -> list[Middleware]:
    return [
        Expiry(),
        WorkerLost(),
        RateLimits(),
        Retries(),
        Results(),
        Chords(),
        Callbacks(),
        TaskLog(),
    ]


__all__ = ["Defer", "Middleware", "Skip", "default_middleware"]
