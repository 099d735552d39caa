"""A benchmark's worker: one system's worker command in its own process group, its output
kept in a temporary file for when it fails (shared by the ``*_vs_peers.py`` scripts)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
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
