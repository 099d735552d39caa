"""The worker: a supervisor of consuming processes, or one process for thread/async/solo pools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import WorkerConfig, choose_config
from .consumer import TaskConsumer
from .process import run_process
from .supervisor import Supervisor

if TYPE_CHECKING:
    from ..app import Celeriac


def run_worker(app: Celeriac, config: WorkerConfig) -> int:
    """Run the worker in the foreground until it is shut down; return the exit code."""
    if config.pool == "process":
        return Supervisor(app, config).run()
    return run_process(app, config, child=False)


__all__ = ["Supervisor", "TaskConsumer", "WorkerConfig", "choose_config", "run_worker"]
