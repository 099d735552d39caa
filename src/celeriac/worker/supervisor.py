"""The process pool: a supervisor that owns N forked children.

Each child is an independent consumer with its own broker connection and
event loop; no task passes through the supervisor. The supervisor

* replaces a child that exits or is killed (OOM, SIGKILL), with a backoff if
  children keep dying at start-up; the dead child's unacked tasks come back
  through the broker once its lease lapses;
* SIGKILLs a child still busy past its task's hard time limit plus a grace
  period (children publish their deadline in shared memory);
* on SIGTERM/SIGINT asks every child for a warm shutdown (SIGTERM), and on a
  second signal, or SIGQUIT, for a cold one (SIGQUIT), SIGKILLing what is left
  after the shutdown timeout.

Only the supervisor counts the user's signals. A signal sent to the whole
process group (systemd's ``KillMode=control-group``, Ctrl-C) reaches it once,
so it counts once; a child may get that SIGTERM directly as well as forwarded,
and takes any number of SIGTERMs as one warm shutdown (``process.py``).
Children are forked with the shutdown signals blocked, and none is forked once
shutdown has begun, so each child either receives the forwarded SIGTERM or is
never started.

The supervisor starts no threads and opens no connections, so forking is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .config import WorkerConfig
from .node import Node
from .process import SHUTDOWN_SIGNALS, run_process

if TYPE_CHECKING:
    from ..app import Celeriac

logger = logging.getLogger("celeriac.worker")

TICK = 0.1


@dataclass(slots=True)
class Child:
    index: int
    pid: int
    started: float


class Supervisor:
    def __init__(self, app: Celeriac, config: WorkerConfig):
        self.app = app
        self.config = config
        self.children: dict[int, Child] = {}
        self.node = Node(config.hostname, config.processes)
        self._signals = 0
        self._restarts = 0
        self._recent_deaths: list[float] = []

    def statistics(self) -> dict[str, Any]:
        return {
            "processes": [c.pid for c in self.children.values()],
            "restarts": self._restarts,
            "pool": self.config.pool,
        }

    def run(self) -> int:
        for signum in SHUTDOWN_SIGNALS:
            signal.signal(signum, self._on_signal)
        for index in range(self.config.processes):
            self._spawn(index)
        logger.info("%s ready: %d process(es)", self.config.hostname, len(self.children))
        shutdown_started: float | None = None
        while self.children:
            time.sleep(TICK)
            self._reap()
            if self._signals == 0:
                self._watch_deadlines()
                continue
            if shutdown_started is None:
                shutdown_started = time.monotonic()
            if time.monotonic() - shutdown_started > self.config.shutdown_timeout + 5:
                self._send_all(signal.SIGKILL)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals == 1 and signum != signal.SIGQUIT:
            logger.info(
                "warm shutdown: finishing running tasks (up to %ss); signal again to stop now",
                self.config.shutdown_timeout,
            )
            self._send_all(signal.SIGTERM)
        else:
            logger.warning("cold shutdown: unacknowledged tasks will be delivered again")
            self._send_all(signal.SIGQUIT)

    def _send_all(self, signum: int) -> None:
        for child in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _spawn(self, index: int) -> None:
        # Blocked across the fork: the child unblocks them once its loop runs with its
        # own handlers, and here a signal waits until the child is in self.children.
        signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
        try:
            if self._signals:  # shutting down: a new child would never be told
                return
            self.node.vacate(index)
            pid = os.fork()
            if pid == 0:  # the child
                self._run_child(index)
            self.children[pid] = Child(index, pid, time.monotonic())
            logger.debug("started child %d (pid %d)", index, pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SHUTDOWN_SIGNALS)

    def _run_child(self, index: int) -> NoReturn:
        code = 1
        try:
            code = run_process(self.app, self.config, child=True, node=self.node, slot=index)
        except BaseException:
            logger.exception("worker child %d crashed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.node.vacate(child.index)
            if self._signals:
                continue
            self._report_death(child, status)
            self._restarts += 1
            self._spawn(child.index)

    def _report_death(self, child: Child, status: int) -> None:
        now = time.monotonic()
        if os.WIFSIGNALED(status):
            how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with code {os.WEXITSTATUS(status)}"
        logger.warning("child %d (pid %d) %s; starting a replacement", child.index, child.pid, how)
        self._recent_deaths = [t for t in self._recent_deaths if now - t < 10] + [now]
        if now - child.started < 1.0 and len(self._recent_deaths) > 3 * self.config.processes:
            logger.error("children keep dying at start-up; waiting 5s before the next one")
            time.sleep(5)

    def _watch_deadlines(self) -> None:
        now = time.time()
        for child in self.children.values():
            deadline = self.node.deadline(child.index)
            if deadline and now > deadline:
                logger.error(
                    "child %d (pid %d) is stuck past its task's hard time limit; killing it",
                    child.index,
                    child.pid,
                )
                self.node.set_deadline(child.index, 0.0)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
