"""Monitoring events in Celery's format: sent by workers (and clients), read by monitors.

``EventDispatcher`` buffers and sends one process's events without ever
holding up a task; ``EventReceiver`` reads the live stream; ``Dumper`` prints it
as ``celery events --dump`` does. The transport is each broker's operations
plane (``celeriac.brokers.operations``).
"""

from .clock import LamportClock, process_clock
from .dispatcher import DispatcherStats, EventDispatcher
from .dump import Dumper
from .event import SOFTWARE_INFO, make_event
from .receiver import EventReceiver, localize

__all__ = [
    "SOFTWARE_INFO",
    "DispatcherStats",
    "Dumper",
    "EventDispatcher",
    "EventReceiver",
    "LamportClock",
    "localize",
    "make_event",
    "process_clock",
]
