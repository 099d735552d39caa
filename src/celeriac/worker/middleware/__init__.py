"""Worker features, one small module each. The default list, in hook order:

before_task: RelayedDuplicates -> Revoked -> Expiry -> WorkerLost -> RateLimits -> Events
             -> Signals;
after_task:  Retries -> Callbacks -> Results -> Chords -> Errbacks -> Handlers -> TaskLog
             -> Events -> Signals
(a retry is decided before the state is stored; callbacks and the next
chain step are sent before, so the stored result lists them as children, as
in Celery; a chord counts a header task only once its result is stored;
errbacks fire after, so they can read it; then the task's own handlers,
``on_success`` and the like, as in Celery). RemoteControl has no task hooks:
it answers the mailbox from worker start to stop (``worker/remote_control.py``);
nor has Backlog, which measures the queues for autoscale. RelayedDuplicates goes
before them all: it skips a relayed copy of a finished task (a message without the
outbox relay's header passes it at no cost).

The user's middleware (the ``worker_middleware`` setting) runs after these,
in the order given, unless a :class:`Placement` puts one right before or right
after a middleware of a given class. :func:`middleware_for` is the list a
worker runs; the worker's banner prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from ...errors import ConfigurationError
from ..remote_control import RemoteControl
from .backlog import Backlog
from .base import Defer, Middleware, Skip
from .callbacks import Callbacks, Errbacks
from .chords import Chords
from .events import Events
from .expiry import Expiry
from .handlers import Handlers
from .logs import TaskLog
from .rate_limits import RateLimits
from .relayed import RelayedDuplicates
from .results import Results
from .retries import Retries
from .revokes import Revoked
from .signals import Signals
from .worker_lost import WorkerLost

if TYPE_CHECKING:
    from ...app import Celeriac


def default_middleware() -> list[Middleware]:
    return [
        RelayedDuplicates(),
        Revoked(),
        Expiry(),
        WorkerLost(),
        RateLimits(),
        Retries(),
        Callbacks(),
        Results(),
        Chords(),
        Errbacks(),
        Handlers(),
        TaskLog(),
        RemoteControl(),
        Backlog(),
        Events(),
        Signals(),
    ]


@dataclass(frozen=True, slots=True)
class Placement:
    """``middleware`` right before, or right after, the first middleware of a class.

    ``middleware`` is an instance (shared by every worker the process runs) or
    a class (instantiated with no arguments for each worker). Give ``before``
    or ``after``, not both; neither: at the end of the list.
    """

    middleware: Middleware | type[Middleware]
    before: type[Middleware] | None = None
    after: type[Middleware] | None = None


MiddlewareEntry: TypeAlias = Middleware | type[Middleware] | Placement
"""One item of the ``worker_middleware`` setting."""


def middleware_for(app: Celeriac) -> list[Middleware]:
    """The middleware a worker of ``app`` runs: the defaults with ``worker_middleware`` placed."""
    return ordered_middleware(default_middleware(), app.conf.worker_middleware)


def ordered_middleware(
    defaults: Sequence[Middleware], extra: Iterable[MiddlewareEntry]
) -> list[Middleware]:
    """``defaults`` with each entry of ``extra`` placed, in the order given.

    A plain middleware (or a :class:`Placement` with no anchor) goes at the end.
    ``Placement(m, before=C)`` goes right before the first middleware that is a
    ``C``; ``after=C`` right after it, and after any placed there earlier, so
    entries anchored to the same middleware keep their order. An anchor may be
    a default or a middleware placed earlier. Raises ``ConfigurationError`` for
    an entry that is not middleware, or an anchor that is not in the list.
    """
    chain = list(defaults)
    placed_after: dict[int, int] = {}  # id(anchor) -> entries already placed after it
    for entry in extra:
        placement = entry if isinstance(entry, Placement) else Placement(entry)
        middleware = _instance(placement.middleware)
        before, after = placement.before, placement.after
        if before is not None and after is not None:
            raise ConfigurationError(
                f"place {type(middleware).__name__} before or after another middleware, not both"
            )
        anchor = before or after
        if anchor is None:
            chain.append(middleware)
            continue
        index = _index_of(chain, anchor, middleware)
        if before is not None:
            chain.insert(index, middleware)
        else:
            count = placed_after.get(id(chain[index]), 0)
            placed_after[id(chain[index])] = count + 1
            chain.insert(index + 1 + count, middleware)
    return chain


def _instance(entry: object) -> Middleware:
    if isinstance(entry, Middleware):
        return entry
    if isinstance(entry, type) and issubclass(entry, Middleware):
        return entry()
    hint = " (pass the object itself, not its import path)" if isinstance(entry, str) else ""
    raise ConfigurationError(
        f"worker_middleware takes Middleware instances or subclasses, not {entry!r}{hint}"
    )


def _index_of(chain: list[Middleware], anchor: object, middleware: Middleware) -> int:
    if not (isinstance(anchor, type) and issubclass(anchor, Middleware)):
        raise ConfigurationError(f"before= and after= take a Middleware subclass, not {anchor!r}")
    for index, candidate in enumerate(chain):
        if isinstance(candidate, anchor):
            return index
    names = ", ".join(type(m).__name__ for m in chain)
    raise ConfigurationError(
        f"cannot place {type(middleware).__name__} next to {anchor.__name__}: "
        f"the worker runs no {anchor.__name__} (it runs {names})"
    )


__all__ = [
    "Backlog",
    "Callbacks",
    "Chords",
    "Defer",
    "Errbacks",
    "Events",
    "Expiry",
    "Handlers",
    "Middleware",
    "MiddlewareEntry",
    "Placement",
    "RateLimits",
    "RelayedDuplicates",
    "RemoteControl",
    "Results",
    "Retries",
    "Revoked",
    "Signals",
    "Skip",
    "TaskLog",
    "WorkerLost",
    "default_middleware",
    "middleware_for",
    "ordered_middleware",
]
