"""Flower 2.2, unchanged, monitors a celeriac worker through the events it sends.

Flower runs as a subprocess (``celery --broker=<url> flower``) on the same
broker as a celeriac worker started with ``-E``; its HTTP API must list the
worker as alive (``/api/workers?status=1``) and its tasks with their final
states (``/api/tasks``), both built from celeriac's events alone.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.testing import WorkerProcess

from .apps.events_celeriac import make_app
from .celery_peers import running
from .services import rabbitmq_vhost, redis_url
from .worker_processes import ROOT, wait_for

TIMEOUT = 60.0
VHOST = f"celeriac-flower-{os.getpid()}"
"""A vhost of this run's own: Celery's fixed ``celeryev`` exchange is not shared."""


@pytest.fixture
def amqp_broker() -> Iterator[str]:
    with rabbitmq_vhost(VHOST) as url:
        yield url


@pytest.fixture
def kombu_broker() -> str:
    """kombu's Redis layout in a database of its own (Celery's event channels carry the
    database number, so no other test's events meet these)."""
    return redis_url(prefixed=False, db=10) + "?layout=kombu"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> Any:
    """The JSON Flower answers, or None while it does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def flower_sees_the_worker(celery_broker: str, celeriac_broker: str, tmp_path: Path) -> None:
    port = free_port()
    flower = ["celery", f"--broker={celery_broker}", "flower", f"--port={port}"]
    unauthenticated = {"FLOWER_UNAUTHENTICATED_API": "true"}  # its API, with no login
    with running([*flower, "--address=127.0.0.1"], unauthenticated, tmp_path / "flower.log"):
        wait_for(lambda: get(port, "/api/workers?status=1") is not None, TIMEOUT, "Flower up")
        backend = redis_url()
        env = {
            "CELERIAC_BROKER_URL": celeriac_broker,
            "CELERIAC_RESULT_BACKEND": backend,
            "PYTHONPATH": str(ROOT),
        }
        log = tmp_path / "worker.log"
        app_ref = "tests.apps.events_celeriac"
        with WorkerProcess(app_ref, "-P", "thread", "-E", "-n", "flowered@test", env=env, log=log):
            app = make_app(celeriac_broker, backend)
            ok = app.send_task("events.add", (2, 3))
            bad = app.send_task("events.boom")
            assert ok.get(timeout=TIMEOUT) == 5
            with pytest.raises(ValueError):
                bad.get(timeout=TIMEOUT)
            app.close()

            def states() -> dict[str, str]:
                tasks = get(port, "/api/tasks") or {}
                return {uuid: task.get("state") for uuid, task in tasks.items()}

            wanted = {ok.id: "SUCCESS", bad.id: "FAILURE"}
            wait_for(lambda: wanted.items() <= states().items(), TIMEOUT, f"tasks {wanted}")
            workers = get(port, "/api/workers?status=1")
            assert workers.get("flowered@test") is True
        tasks = get(port, "/api/tasks")
        assert tasks[ok.id]["name"] == "events.add" and tasks[ok.id]["result"] == "5"
        assert tasks[ok.id]["worker"] == "flowered@test"
        assert "ValueError" in tasks[bad.id]["exception"]
        wait_for(
            lambda: get(port, "/api/workers?status=1").get("flowered@test") is False,
            TIMEOUT,
            "the worker offline",
        )


def test_flower_on_rabbitmq(amqp_broker: str, tmp_path: Path) -> None:
    flower_sees_the_worker(amqp_broker, amqp_broker, tmp_path)


def test_flower_on_redis_with_kombus_layout(kombu_broker: str, tmp_path: Path) -> None:
    flower_sees_the_worker(kombu_broker.partition("?")[0], kombu_broker, tmp_path)
