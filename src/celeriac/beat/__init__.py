"""Periodic tasks: ``beat_schedule`` sent by whichever beat holds the broker's lease.

::

    entries.py   beat_schedule's entries, BeatLazyFunc, each tick's task id
    plan.py      which ticks are due (and the catch-up rule)
    service.py   Beat: claim the lease, send the due ticks with their record
    process.py   run_beat (``celeriac beat``), the embedded beat (``worker -B``); not
                 imported here, so ``import celeriac`` does not load it

The lease and the last runs live in the broker's storage
(``celeriac.brokers.beat_store``); the schedules are ``celeriac.schedules``.
"""

from __future__ import annotations

from .entries import BeatLazyFunc, Entry, entries_from, tick_id
from .service import Beat, beat_class

__all__ = [
    "Beat",
    "BeatLazyFunc",
    "Entry",
    "beat_class",
    "entries_from",
    "tick_id",
]
