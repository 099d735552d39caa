"""What middleware may use of the worker process they run in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..connections import LoopConnections
from ..serialization import Codec
from .node import Node
from .process_state import ProcessState
from .revokes import Revokes

if TYPE_CHECKING:
    from ..app import Celeriac


@dataclass(slots=True)
class WorkerContext:
    app: Celeriac
    codec: Codec
    hostname: str
    concurrency: int
    """Task slots in this process."""
    processes: int
    """Processes of the whole worker (rate limits are shared out among them)."""
    node: Node
    """What the worker's processes share (``celeriac.worker.node``)."""
    slot: int
    """This process's slot in ``node``; slot 0 is the node's voice."""
    beat: bool = False
    """Whether beat runs beside this worker (``-B``)."""
    state: ProcessState = field(default_factory=ProcessState)
    """What this process runs and consumes now (remote control reads and changes it)."""
    connections: LoopConnections = field(init=False)
    """The worker loop's broker and result store, set when the consume loop starts."""
    revokes: Revokes = field(init=False)
    """The revokes this process honours (``celeriac.worker.revokes``), set when the
    consume loop starts."""

    @property
    def is_voice(self) -> bool:
        """Whether this process answers remote control and sends the worker's own events."""
        return self.slot == 0
