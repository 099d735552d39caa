"""A benchmark's worker: one system's worker command in its own process group, its output
kept in a temporary file for when it fails; and the round-trip measure that needs one
(shared by the ``*_vs_peers.py`` scripts)."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class Worker:
    """``python <argv>`` run from ``cwd`` with ``env``; ``stop()`` ends it and its children."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile(prefix=f"bench-{name}-worker-")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM to the worker (each system's warm shutdown), then SIGKILL to its group."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftover children, if any
            self.proc.wait(timeout=10)
        finally:
            self.log.close()


def round_trips(worker: Worker, round_trip: Callable[[], object], calls: int) -> dict[str, float]:
    """p50 and p99 (ms) of ``calls`` round trips through ``worker``, after it answers once
    and 20 warm-up calls (neither timed); the worker is stopped at the end."""
    try:
        deadline = time.perf_counter() + 60
        while True:  # waits for the worker to start; not timed
            worker.check()
            try:
                round_trip()
                break
            except Exception:
                if time.perf_counter() > deadline:
                    raise
        for _ in range(20):  # warm-up; not timed
            round_trip()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            round_trip()
            times.append(time.perf_counter() - started)
    finally:
        worker.stop()
    times.sort()
    return {
        "p50": statistics.median(times) * 1000,
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
    }
