"""One event as Celery builds it (``celery.events.Event`` + ``EventDispatcher``).

Every event is a flat dict: its ``type`` (``task-succeeded``), ``hostname``
(the node, ``celeriac@host``), ``timestamp`` (unix seconds), ``utcoffset``
(hours, as ``celery.utils.time.utcoffset``: positive west of UTC), ``pid``,
``clock`` (the sender's Lamport clock) and the type's own fields, named as
Celery names them so that Flower and ``celery events`` read celeriac's. The
worker's events carry what ``celery.worker.heartbeat`` sends:
``freq``, ``active``, ``processed``, ``loadavg``, and the software, which
says celeriac (``sw_ident = "py-celeriac"``, celeriac's version): Flower
shows it, and a monitor can tell the two kinds of node apart.
"""

from __future__ import annotations

import math
import os
import platform
import reprlib
import time
from typing import Any

from .._version import __version__
from .clock import LamportClock

__all__ = [
    "RESULT_REPR_MAX",
    "SOFTWARE_INFO",
    "load_average",
    "make_event",
    "short_repr",
    "utcoffset",
]

SOFTWARE_INFO: dict[str, Any] = {
    "sw_ident": "py-celeriac",
    "sw_ver": __version__,
    "sw_sys": platform.system(),
}
"""The software fields of worker-online/heartbeat/offline (Celery: ``py-celery``)."""

RESULT_REPR_MAX = 1024
"""The length of a result's repr in task-succeeded (Celery's ``resultrepr_maxsize``)."""

_repr = reprlib.Repr()
_repr.maxstring = RESULT_REPR_MAX
_repr.maxother = RESULT_REPR_MAX
_repr.maxlevel = 4


def short_repr(value: object, limit: int = RESULT_REPR_MAX) -> str:
    """``repr(value)`` cut to ``limit`` characters, without building a huge one first
    (Celery's ``saferepr``); a repr that raises is named, never raised."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a user's __repr__: the event still goes
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def utcoffset() -> float:
    """The local zone's offset in hours, west of UTC positive (Celery's ``utcoffset()``)."""
    if time.localtime().tm_isdst:
        return time.altzone / 3600
    return time.timezone / 3600


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load, rounded up to hundredths (as Celery sends it)."""
    try:
        loads = os.getloadavg()
    except OSError:  # not available on this platform
        return [0.0, 0.0, 0.0]
    return [math.ceil(load * 100) / 100 for load in loads]


_offset: list[float] = [0.0, 0.0]
"""``[until, utcoffset()]``: the offset, looked up again once a minute (a zone's
offset changes twice a year; ``time.localtime`` costs more than the rest of an event)."""


def make_event(
    type_: str, hostname: str, clock: LamportClock, fields: dict[str, Any]
) -> dict[str, Any]:
    """The event ``type_`` with ``fields``, stamped now with the clock moved forward."""
    now = time.time()
    if now >= _offset[0]:
        _offset[:] = [now + 60.0, utcoffset()]
    return {
        "hostname": hostname,
        "utcoffset": _offset[1],
        "pid": os.getpid(),
        "clock": clock.forward(),
        **fields,
        "timestamp": now,
        "type": type_,
    }
