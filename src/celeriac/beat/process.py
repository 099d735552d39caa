"""Running beat: ``celeriac beat`` in the foreground, or embedded beside a worker (``-B``).

The embedded beat is a forked process of its own (:mod:`celeriac.embedded`,
shared with the embedded outbox relay) that dies with the worker's main
process, so a SIGKILLed worker leaves no beat behind (its lease lapses and
another beat takes over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import embedded as embedded_process
from ..signals import beat_embedded_init, beat_init
from .service import beat_class

if TYPE_CHECKING:
    from ..app import Celeriac

__all__ = ["run_beat", "start_embedded"]


def run_beat(app: Celeriac, *, embedded: bool = False, name: str | None = None) -> int:
    """Run beat until SIGTERM or SIGINT; it gives its lease up on the way out."""
    beat = beat_class(app)(app, name)
    beat_init.send(sender=beat)
    if embedded:
        beat_embedded_init.send(sender=beat)
    return embedded_process.run_service(app, beat.run)


def start_embedded(app: Celeriac) -> int:
    """Fork the embedded beat; returns its pid."""
    return embedded_process.start_embedded(
        app, lambda: run_beat(app, embedded=True), "embedded beat"
    )
