"""Celery's remote control and celeriac's, each against the other, for real.

Celery 5.7's own CLI (``celery inspect``/``celery control``, through
``tests.apps.control_celery`` on the same broker) drives a celeriac worker
process, and celeriac's ``app.control`` and CLI ask a real Celery worker. On
RabbitMQ through Celery's exchanges (in a vhost of this module's own, where the
names are Celery's, unprefixed); on Redis through kombu's layout (with a key
prefix of the test's own, which kombu puts before its pub/sub channels too).
Nodes are named uniquely and addressed by ``-d``: the mailbox is shared by every
node on the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from celeriac import Celeriac, states
from celeriac.redis.url import split_prefix
from celeriac.testing import WorkerProcess

from .celery_peers import running
from .services import rabbitmq_vhost, redis_url
from .worker_processes import ROOT, client_app, wait_for, worker_env

celery = pytest.importorskip("celery")

APP = "tests.apps.remote_control"


@dataclass(frozen=True)
class Broker:
    celeriac_url: str
    """The broker as celeriac's worker and client name it."""
    celery_env: dict[str, str]
    """What ``tests.apps.control_celery`` needs to reach the same mailbox."""
    backend: str


VHOST = f"celeriac-control-{os.getpid()}"


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this module's own: Celery's unprefixed names, no other test's."""
    with rabbitmq_vhost(VHOST) as url:
        yield url


@pytest.fixture(params=["amqp", "redis-kombu"])
def broker(request: pytest.FixtureRequest) -> Broker:
    if request.param == "amqp":
        url = request.getfixturevalue("vhost")
        return Broker(url, {"CONTROL_BROKER": url}, redis_url())
    url = redis_url()
    plain, prefix = split_prefix(url)
    env = {"CONTROL_BROKER": plain, "CONTROL_PREFIX": prefix}
    return Broker(f"{url}&layout=kombu", env, url)


def command(program: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``celery``'s or ``celeriac``'s CLI, run as a user runs it."""
    argv = {
        "celery": [sys.executable, "-m", "celery", "-A", "tests.apps.control_celery"],
        "celeriac": [sys.executable, "-m", "celeriac", "-A", APP],
    }[program]
    return subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def celeriac_node(broker: Broker, tmp_path: Path) -> Iterator[tuple[Celeriac, str, dict[str, str]]]:
    env = {**worker_env(broker.celeriac_url, broker.backend, tmp_path), **broker.celery_env}
    hostname = f"celeriac-{uuid.uuid4().hex[:8]}@interop"
    worker = WorkerProcess(
        APP, "-c", "2", "-n", hostname, cwd=ROOT, env=env, log=tmp_path / "worker.log"
    )
    client = client_app(env)
    with worker:
        inspect = client.control.inspect(destination=[hostname], timeout=0.3)
        wait_for(inspect.ping, 20, f"{hostname} answers ping")
        try:
            yield client, hostname, env
        finally:
            (tmp_path / "release").write_text("")
            client.close()


def test_celery_cli_controls_a_celeriac_worker(
    celeriac_node: tuple[Celeriac, str, dict[str, str]], tmp_path: Path
) -> None:
    client, hostname, env = celeriac_node
    ping = command("celery", "inspect", "ping", "-d", hostname, env=env)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout == f"->  {hostname}: OK\n        pong\n\n1 node online.\n"
    assert command("celeriac", "inspect", "ping", "-d", hostname, env=env).stdout == ping.stdout

    held = client.send_task(f"{APP}.hold", (str(tmp_path),))
    wait_for((tmp_path / held.id).exists, 10, "the task started")
    active = command("celery", "inspect", "active", "-d", hostname, "--json", env=env)
    assert active.returncode == 0, active.stderr
    assert held.id in active.stdout and f"{APP}.hold" in active.stdout

    later = str(uuid.uuid4())
    revoke = command("celery", "control", "revoke", later, "-d", hostname, env=env)
    assert revoke.returncode == 0, revoke.stderr
    assert f"tasks {{'{later}'}} flagged as revoked" in revoke.stdout
    client.send_task(f"{APP}.stamp", task_id=later)  # the worker kept the revoke
    wait_for(lambda: client.AsyncResult(later).state == states.REVOKED, 10, "revoked")


PEER_WORKER = [sys.executable, "-m", "celery", "-A", "tests.apps.control_celery", "worker"]


def test_celeriac_inspects_a_celery_worker(broker: Broker, tmp_path: Path) -> None:
    hostname, queue = f"celery-{uuid.uuid4().hex[:8]}@interop", f"q-{uuid.uuid4().hex[:8]}"
    args = ["-P", "solo", "-n", hostname, "-Q", queue, "-l", "warning", "--without-mingle"]
    client = Celeriac("client", broker=broker.celeriac_url, set_as_current=False)
    with running([*PEER_WORKER, *args, "--without-gossip"], broker.celery_env, tmp_path / "w.log"):
        inspect = client.control.inspect(destination=[hostname], timeout=0.5)
        wait_for(inspect.ping, 30, f"the Celery worker {hostname} answers")
        assert inspect.ping() == {hostname: {"ok": "pong"}}
        stats = inspect.stats()[hostname]
        assert stats["pool"]["max-concurrency"] == 1 and stats["pid"] > 0
        assert [q["name"] for q in inspect.active_queues()[hostname]] == [queue]
        env = {**broker.celery_env, "CELERIAC_BROKER_URL": broker.celeriac_url}
        ping = command("celeriac", "inspect", "ping", "-d", hostname, env=env)
        assert ping.stdout == f"->  {hostname}: OK\n        pong\n\n1 node online.\n"
    client.close()
