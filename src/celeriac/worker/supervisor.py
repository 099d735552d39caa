"""The process pool: a supervisor that owns N forked children.

Each child is an independent consumer with its own broker connection and
event loop; no task passes through the supervisor. The supervisor

* replaces a child that exits or is killed (OOM, SIGKILL), with a backoff if
  children keep dying at start-up; the dead child's unacked tasks come back
  through the broker once its lease lapses;
* SIGKILLs a child still busy past its task's hard time limit plus a grace
  period (children publish their deadline in shared memory);
* keeps ``node.wanted`` children each tick: ``pool_grow``/``pool_shrink`` change
  that number, the autoscaler (``autoscale.py``) sets it by load; a child too
  many gets a warm SIGTERM (idle ones first, never the voice in slot 0);
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
import shutil
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from ..signals import worker_before_create_process, worker_init, worker_shutdown
from .autoscale import Autoscaler, SlotLoad
from .config import WorkerConfig
from .node import Node
from .node_link import runtime_dir
from .process import SHUTDOWN_SIGNALS, announce_shutdown, run_process
from .revokes import end_process

if TYPE_CHECKING:
    from ..app import Celeriac

logger = logging.getLogger("celeriac.worker")

TICK = 0.1


@dataclass(slots=True)
class Child:
    index: int
    pid: int
    started: float
    stopping: bool = False
    """Told to stop (the pool shrank): it finishes its task and is not replaced."""
    last_busy: float = 0.0
    """When it last ran a task (monotonic; the start at first)."""
    processed: int = 0
    """Its slot's processed count when last seen, to see a task come and go in a tick."""

    def __post_init__(self) -> None:
        self.last_busy = self.started


class Supervisor:
    def __init__(self, app: Celeriac, config: WorkerConfig):
        self.app = app
        self.config = config
        self.children: dict[int, Child] = {}
        self.node = Node(config.hostname, _capacity(config), config.processes, config.autoscale)
        self._autoscaler = Autoscaler(config.autoscale_keepalive)
        self._size = config.processes
        self.node.supervisor = os.getpid()
        self._signals = 0
        self._restarts = 0
        self._recent_deaths: list[float] = []

    @property
    def hostname(self) -> str:
        """The worker's node name (``celeriac@host``), as Celery's worker has it."""
        return self.config.hostname

    def statistics(self) -> dict[str, Any]:
        return {
            "processes": [c.pid for c in self.children.values()],
            "restarts": self._restarts,
            "pool": self.config.pool,
        }

    def run(self) -> int:
        worker_init.send(sender=self)
        for signum in SHUTDOWN_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._resize()
        announced = False
        shutdown_started: float | None = None
        while self.children or not self._signals:
            time.sleep(TICK)
            self._reap()
            if not announced and all(self.node.ready(c.index) for c in self.children.values()):
                announced = True
                logger.info("%s ready: %d process(es)", self.config.hostname, len(self.children))
            if self._signals == 0:
                self._watch_deadlines()
                self._resize()
                continue
            if shutdown_started is None:
                shutdown_started = time.monotonic()
            if time.monotonic() - shutdown_started > self.config.shutdown_timeout + 5:
                self._send_all(signal.SIGKILL)
        shutil.rmtree(runtime_dir(os.getpid()), ignore_errors=True)  # the children's sockets
        worker_shutdown.send(sender=self)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals == 1 and signum != signal.SIGQUIT:
            logger.info(
                "warm shutdown: finishing running tasks (up to %ss); signal again to stop now",
                self.config.shutdown_timeout,
            )
            self._send_all(signal.SIGTERM)
            announce_shutdown(self.hostname, signum, cold=False)
        else:
            logger.warning("cold shutdown: unacknowledged tasks will be delivered again")
            self._send_all(signal.SIGQUIT)
            announce_shutdown(self.hostname, signum, cold=True)

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
            worker_before_create_process.send(sender=self)
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
            self.app.on_after_fork.send(sender=self.app)
            code = run_process(self.app, self.config, child=True, node=self.node, slot=index)
        except BaseException:
            logger.exception("worker child %d crashed", os.getpid())
        finally:
            if code < 0:  # a terminated task's thread still runs: end by the signal asked
                end_process(-code)
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
            if child.stopping:
                logger.info("child %d (pid %d) stopped: the pool shrank", child.index, child.pid)
                continue
            self._report_death(child, status)
            self._restarts += 1  # the next _resize starts its replacement

    def _resize(self) -> None:
        """Keep ``node.wanted`` children running (the autoscaler's number, when on).

        A new child takes the lowest free slot (slot 0, the voice, first). When
        there are too many, the ones idle longest go first, never the voice; a
        busy one told to stop finishes its task (a warm stop), and is not replaced.
        """
        now = time.monotonic()
        live = [c for c in self.children.values() if not c.stopping]
        loads = {c.index: self._load(c, now) for c in live}
        if self.node.autoscale_bounds is not None:  # else only pool_grow/pool_shrink set it
            self.node.wanted = self._autoscaler.wanted(self.node, list(loads.values()), now)
        wanted = self.node.wanted
        if wanted != self._size:
            logger.info("pool: %d -> %d process(es)", self._size, wanted)
            self._size = wanted
        missing = wanted - len(live)
        if missing > 0:
            taken = {c.index for c in self.children.values()}
            for index in [i for i in range(self.node.capacity) if i not in taken][:missing]:
                self._spawn(index)
        for child in sorted(
            (c for c in live if c.index != 0),
            key=lambda c: (self.node.active(c.index) > 0, -loads[c.index].idle_for, -c.index),
        )[: max(0, -missing)]:
            child.stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def _load(self, child: Child, now: float) -> SlotLoad:
        processed = self.node.processed(child.index)
        if self.node.active(child.index) or processed != child.processed:
            child.last_busy, child.processed = now, processed
        return SlotLoad(child.index, now - child.last_busy)

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


def _capacity(config: WorkerConfig) -> int:
    """The most children the node can hold: its shared memory is sized before the first
    fork. Room for ``pool_grow`` and ``autoscale`` up to four per core, or the configured
    size or autoscale maximum if larger."""
    configured = max(config.processes, config.autoscale[0] if config.autoscale else 1)
    return max(configured, 4 * (os.cpu_count() or 1))
