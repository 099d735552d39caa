"""What the tests that run real worker processes share: their environment, a client
app on the same broker, the log of runs the test apps write, and waiting for a condition.

The test apps (``tests.apps.durable``, ``tests.apps.shutdown``) take their broker
and result store from ``CELERIAC_*`` variables and append a line per run to the
file named by ``RUN_LOG``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from celeriac import Celeriac
from celeriac.testing import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
"""Where workers start, so ``tests.apps.*`` import."""


def worker_env(
    broker: str,
    backend: str,
    tmp_path: Path,
    *,
    lease_timeout: float = 2.0,
    shutdown_timeout: float = 10.0,
) -> dict[str, str]:
    """The environment of a worker process (and of its client, see :func:`client_app`)."""
    return {
        "CELERIAC_BROKER_URL": broker,
        "CELERIAC_RESULT_BACKEND": backend,
        "CELERIAC_BROKER_LEASE_TIMEOUT": str(lease_timeout),
        "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": str(shutdown_timeout),
        "RUN_LOG": str(tmp_path / "runs.log"),
    }


def revocable_worker(env: dict[str, str], tmp_path: Path, *args: str) -> WorkerProcess:
    """A worker of ``tests.apps.revocable``, for the revoke and autoscale tests."""
    return WorkerProcess(
        "tests.apps.revocable", *args, cwd=ROOT, env=env, log=tmp_path / "worker.log"
    )


def client_app(env: dict[str, str]) -> Celeriac:
    """A client on the broker and result store of ``env``, with the same lease."""
    return Celeriac(
        "client",
        broker=env["CELERIAC_BROKER_URL"],
        backend=env["CELERIAC_RESULT_BACKEND"],
        broker_lease_timeout=float(env["CELERIAC_BROKER_LEASE_TIMEOUT"]),
        set_as_current=False,
    )


def run_lines(env: dict[str, str]) -> list[list[str]]:
    """The lines the test apps wrote to RUN_LOG, split into fields."""
    path = Path(env["RUN_LOG"])
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split() for line in lines if line]


def runs(env: dict[str, str]) -> Counter[str]:
    """How often each task id ran to the end (``tests.apps.durable``'s ``<id> <pid>`` lines)."""
    return Counter(fields[0] for fields in run_lines(env))


def wait_for(condition: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")
