"""Testing helpers: an in-memory app, a worker in a thread, a worker in a subprocess.

Use as a pytest plugin (``pytest_plugins = ["celeriac.testing"]``) for the
``celeriac_app``, ``celeriac_eager_app`` and ``celeriac_worker`` fixtures, or
call the helpers directly::

    app = memory_app()
    with worker_thread(app):
        assert add.delay(2, 2).get(timeout=5) == 4
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._sync import new_event_loop
from .app import Celeriac
from .worker.consumer import TaskConsumer

__all__ = ["WorkerProcess", "memory_app", "worker_thread"]


def memory_app(name: str = "test", **settings: Any) -> Celeriac:
    """An app on a fresh, private ``memory://`` broker and result store."""
    url = f"memory://{name}-{uuid.uuid4().hex[:8]}"
    settings.setdefault("broker_url", url)
    settings.setdefault("result_backend", url)
    return Celeriac(name, **settings)


@contextlib.contextmanager
def worker_thread(
    app: Celeriac,
    *,
    concurrency: int = 4,
    prefetch_multiplier: int = 1,
    queues: Sequence[str] | None = None,
    shutdown_timeout: float = 10.0,
) -> Iterator[TaskConsumer]:
    """Run a consume loop (thread pool) in a background thread for the ``with`` block."""
    consumer = TaskConsumer(
        app,
        list(queues or [app.conf.task_default_queue]),
        concurrency=concurrency,
        prefetch_multiplier=prefetch_multiplier,
        hostname=f"test-worker@{os.getpid()}",
        shutdown_timeout=shutdown_timeout,
    )
    started = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)

        async def run() -> None:
            try:
                started.set()
                await consumer.run()
            finally:
                await app.aclose()

        try:
            loop.run_until_complete(run())
        except BaseException as exc:  # reported in the test's thread
            failure.append(exc)
            started.set()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=main, name="celeriac-test-worker", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield consumer
    finally:
        consumer.request_stop("test over")
        thread.join(shutdown_timeout + 10)
        if failure:
            raise failure[0]


class WorkerProcess:
    """``celeriac -A <app_ref> worker ...`` as a subprocess, for tests that kill things."""

    def __init__(
        self,
        app_ref: str,
        *args: str,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ):
        self.cmd = [sys.executable, "-m", "celeriac", "-A", app_ref, "worker", *args]
        self.cwd = str(cwd) if cwd is not None else None
        self.env = {**os.environ, **(env or {})}
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 20.0, *, wait: bool = True) -> WorkerProcess:
        """Start the worker; with ``wait`` (and a log), return once it says it is ready:
        every process consumes, its queues take messages for it."""
        with open(self.log_path or os.devnull, "wb") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=out, start_new_session=True
            )
        if wait and self.log_path is not None:
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if b" ready" in self.log_path.read_bytes():
                    return self
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited early:\n{self.log()}")
                time.sleep(0.05)
            raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def children(self) -> list[int]:
        """PIDs of the worker's child processes (process pool)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """Warm shutdown; SIGKILL the whole group if it takes longer than ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pass
else:

    @pytest.fixture
    def celeriac_app() -> Iterator[Celeriac]:
        """A fresh in-memory app."""
        app = memory_app()
        yield app
        app.close()

    @pytest.fixture
    def celeriac_eager_app() -> Iterator[Celeriac]:
        """An in-memory app whose tasks run at once in the caller (``task_always_eager``)."""
        app = memory_app(task_always_eager=True)
        yield app
        app.close()

    @pytest.fixture
    def celeriac_worker(celeriac_app: Celeriac) -> Iterator[TaskConsumer]:
        """A worker consuming ``celeriac_app``'s default queue in a thread."""
        with worker_thread(celeriac_app) as consumer:
            yield consumer
