"""Celery 5.7 clients, and worker processes, for the tests that run Celery beside celeriac."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery")

ROOT = Path(__file__).resolve().parent.parent
"""Where worker processes start, so ``tests.apps.*`` import."""


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` (a worker) as a process with ``env`` added, output to ``log`` if given;
    terminated at the end, killed if it does not stop within 30 s."""
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out if log else None,
            stderr=out if log else None,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def celery_client(broker_url: str, backend_url: str) -> Any:
    """A Celery client with JSON only, as the interop apps are configured."""
    app = celery.Celery("client", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def close_celery(app: Any) -> None:
    """Close a Celery client and every Redis connection it opened (they would leak)."""
    gc.collect()  # Celery's results unsubscribe on __del__: before the client closes
    backend = app.backend
    with contextlib.suppress(Exception):
        backend.result_consumer.stop()
        # A result collected later would unsubscribe, and so reconnect: nothing to do now.
        backend.result_consumer.cancel_for = lambda *args, **kwargs: None
    with contextlib.suppress(Exception):
        backend.client.connection_pool.disconnect()
    app.close()
