"""Remote control against real worker processes: ``app.control``, ``inspect`` and the CLI.

Each broker test runs ``celeriac -A tests.apps.remote_control worker -c 2
--prefetch 2`` (two forked children, each holding a second delivery while it
runs one), so an answer that lists tasks of both children proves that the
voice gathered from its sibling. On RabbitMQ the mailbox is shared by every
node on the server (Celery's names are not prefixed), so each test names its
node uniquely and addresses it by ``destination``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, states
from celeriac._sync import run_sync
from celeriac.brokers.operations import REPLY_EXCHANGE
from celeriac.control import Inspect
from celeriac.control.mailbox import clock
from celeriac.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.result import AsyncResult
from celeriac.testing import WorkerProcess, memory_app, worker_thread

from .services import postgres_url, rabbitmq_url, redis_url
from .worker_processes import ROOT, client_app, wait_for, worker_env

APP = "tests.apps.remote_control"
HOLD = f"{APP}.hold"


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/broker.db"


def _redis(tmp_path: Path) -> str:
    return redis_url()


def _amqp(tmp_path: Path) -> str:
    return rabbitmq_url()


def _postgres(tmp_path: Path) -> str:
    return postgres_url()


BROKERS: dict[str, Callable[[Path], str]] = {
    "sqlite": _sqlite,
    "redis": _redis,
    "amqp": _amqp,
    "postgres": _postgres,
}


@dataclass
class Node:
    """A worker process, its name, and a client on its broker."""

    client: Celeriac
    worker: WorkerProcess
    hostname: str
    env: dict[str, str]
    tmp_path: Path

    def inspect(self, timeout: float = 2.0) -> Inspect:
        return self.client.control.inspect(destination=[self.hostname], timeout=timeout)

    def hold(self, queue: str | None = None) -> AsyncResult[int]:
        return self.client.send_task(HOLD, (str(self.tmp_path / "held"),), queue=queue)

    def started(self, result: AsyncResult[int]) -> bool:
        return (self.tmp_path / "held" / result.id).exists()

    def ran_since_sent(self) -> None:
        """Tasks on ``celery`` sent now have run: the node fetched after what came before
        (what it did not take by then, it does not consume)."""
        for _ in range(2):
            self.client.send_task(f"{APP}.stamp").get(timeout=10)

    def release(self) -> None:
        (self.tmp_path / "held" / "release").write_text("")

    def celeriac(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``celeriac -A tests.apps.remote_control <args>`` as a user runs it."""
        return subprocess.run(
            [sys.executable, "-m", "celeriac", "-A", APP, *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(params=sorted(BROKERS))
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    url = BROKERS[request.param](tmp_path)
    backend = url if request.param != "amqp" else redis_url()
    env = worker_env(url, backend, tmp_path)
    (tmp_path / "held").mkdir()
    hostname = f"rc-{uuid.uuid4().hex[:8]}@test"
    args = ("-c", "2", "--prefetch", "2", "-n", hostname)
    worker = WorkerProcess(APP, *args, cwd=ROOT, env=env, log=tmp_path / "worker.log")
    client = client_app(env)
    with worker:
        try:
            listening(client, hostname)
            yield Node(client, worker, hostname, env, tmp_path)
        finally:
            (tmp_path / "held" / "release").write_text("")
            client.close()


def listening(client: Celeriac, hostname: str) -> None:
    """Wait until the node's voice listens (a worker logs "ready" before its children do)."""
    inspect = client.control.inspect(destination=[hostname], timeout=0.3)
    wait_for(inspect.ping, 20, f"{hostname} answers ping")


def _answer(node: Node, method: str, *args: object) -> Any:
    replies = getattr(node.inspect(), method)(*args)
    assert replies is not None, f"{node.hostname} did not answer {method}:\n{node.worker.log()}"
    return replies[node.hostname]


def test_inspect_gathers_every_child(node: Node) -> None:
    assert _answer(node, "ping") == {"ok": "pong"}
    results = [node.hold() for _ in range(4)]
    wait_for(lambda: sum(map(node.started, results)) == 2, 10, "two tasks running")
    wait_for(lambda: len(_answer(node, "reserved")) == 2, 10, "two tasks waiting for a slot")

    active = _answer(node, "active")
    stats = _answer(node, "stats")
    assert sorted(a["worker_pid"] for a in active) == sorted(stats["pool"]["processes"])
    assert len(set(stats["pool"]["processes"])) == 2  # one task in each child
    running = {a["id"] for a in active}
    assert running == {r.id for r in results if node.started(r)}
    first = active[0]
    assert first["name"] == first["type"] == HOLD
    assert first["hostname"] == node.hostname and first["time_start"] > 0
    assert first["delivery_info"]["routing_key"] == "celery"
    waiting = {r["id"] for r in _answer(node, "reserved")}
    assert waiting == {r.id for r in results} - running

    some_id, other = next(iter(running)), next(iter(waiting))
    found = _answer(node, "query_task", some_id, other)
    assert found[some_id][0] == "active" and found[other][0] == "reserved"
    assert found[some_id][1]["id"] == some_id

    node.release()
    assert {r.get(timeout=15) for r in results} == set(stats["pool"]["processes"])
    wait_for(lambda: _answer(node, "stats")["total"] == {HOLD: 4}, 5, "four tasks counted")
    assert _answer(node, "active") == [] and _answer(node, "scheduled") == []
    assert HOLD in _answer(node, "registered")
    assert [q["name"] for q in _answer(node, "active_queues")] == ["celery"]
    conf = _answer(node, "conf")
    assert conf["broker_url"] == node.client.broker_url.replace(":guest@", ":***@")


def test_rate_limit_and_time_limit_change_the_running_worker(node: Node) -> None:
    nap = f"{APP}.nap"
    reply = node.client.control.time_limit(
        nap, soft=0.3, hard=0.6, destination=[node.hostname], reply=True
    )
    assert reply == [{node.hostname: {"ok": "time limits set successfully"}}]
    limited = node.client.send_task(nap, (5,))
    with pytest.raises((SoftTimeLimitExceeded, TimeLimitExceeded)):
        limited.get(timeout=10)

    stamp = f"{APP}.stamp"
    reply = node.client.control.rate_limit(stamp, "120/m", destination=[node.hostname], reply=True)
    assert reply == [{node.hostname: {"ok": "new rate limit set successfully"}}]
    times = sorted(r.get(timeout=15) for r in [node.client.send_task(stamp) for _ in range(4)])
    # 2/s for the node, 1/s per child, one token each at first: the last two wait ~1 s
    assert times[-1] - times[0] > 0.6

    unknown = node.client.control.rate_limit(
        "no.such.task", "1/s", destination=[node.hostname], reply=True
    )
    assert unknown == [{node.hostname: {"error": "unknown task"}}]


def test_add_consumer_then_cancel_consumer(node: Node) -> None:
    queue = f"extra-{uuid.uuid4().hex[:6]}"
    waiting = node.hold(queue=queue)
    node.ran_since_sent()
    assert not node.started(waiting)  # nobody consumes the queue yet

    # Every child starts consuming before the voice answers: on a loaded machine that can
    # take longer than Celery's 1 s default; the call returns at the one answer awaited.
    reply = node.client.control.add_consumer(
        queue, destination=[node.hostname], reply=True, timeout=5
    )
    assert reply == [{node.hostname: {"ok": f"add consumer {queue}"}}]
    wait_for(lambda: node.started(waiting), 10, "the task on the added queue started")
    names = [q["name"] for q in _answer(node, "active_queues")]
    assert names == ["celery", queue]

    reply = node.client.control.cancel_consumer(
        queue, destination=[node.hostname], reply=True, timeout=5
    )
    assert reply == [{node.hostname: {"ok": f"no longer consuming from {queue}"}}]
    node.release()
    assert waiting.get(timeout=10) > 0  # the task taken before the cancel is settled
    assert [q["name"] for q in _answer(node, "active_queues")] == ["celery"]
    later = node.client.send_task(f"{APP}.stamp", queue=queue)
    node.ran_since_sent()
    assert later.state == states.PENDING


def test_revoke_is_kept_and_terminate_stops_the_running_task(node: Node) -> None:
    running = node.hold()
    wait_for(lambda: node.started(running), 10, "the task started")
    reply = node.client.control.revoke(
        running.id, destination=[node.hostname], terminate=True, signal="SIGKILL", reply=True
    )
    assert reply == [{node.hostname: {"ok": f"terminate: {running.id}"}}]
    assert running.get(timeout=10, propagate=False) is not None
    assert running.state == states.REVOKED

    later_id = str(uuid.uuid4())
    node.client.control.revoke(later_id)  # stored in the broker, then broadcast
    assert later_id in _answer(node, "revoked")
    node.client.send_task(f"{APP}.stamp", task_id=later_id)
    wait_for(lambda: node.client.AsyncResult(later_id).state == states.REVOKED, 10, "revoked")


def test_pool_shrink_grow_and_shutdown(node: Node) -> None:
    def processes() -> int:
        return len(_answer(node, "stats")["pool"]["processes"])

    reply = node.client.control.pool_shrink(1, destination=[node.hostname], reply=True)
    assert reply == [{node.hostname: {"ok": "pool will shrink"}}]
    wait_for(lambda: processes() == 1, 10, "one child left")
    node.client.control.pool_grow(1, destination=[node.hostname], reply=True)
    wait_for(lambda: processes() == 2, 10, "two children again")
    off = node.client.control.autoscale(4, 1, destination=[node.hostname], reply=True)
    assert off == [{node.hostname: {"error": "ValueError('Autoscale not enabled')"}}]

    assert node.client.control.shutdown(destination=[node.hostname]) is None  # no reply, as Celery
    assert node.worker.proc is not None
    assert node.worker.proc.wait(30) == 0


@pytest.mark.parametrize("node", ["sqlite"], indirect=True)  # the CLI is the same on every broker
def test_cli_inspect_ping_and_control_rate_limit(node: Node) -> None:
    ping = node.celeriac("inspect", "ping", "-d", node.hostname)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout == f"->  {node.hostname}: OK\n        pong\n\n1 node online.\n"

    limit = node.celeriac("control", "rate_limit", f"{APP}.stamp", "10/m", "-d", node.hostname)
    assert limit.returncode == 0, limit.stderr
    assert limit.stdout == f"->  {node.hostname}: OK\n        new rate limit set successfully\n"

    as_json = node.celeriac("inspect", "ping", "-d", node.hostname, "--json")
    assert as_json.stdout.strip() == f'{{"{node.hostname}": {{"ok": "pong"}}}}'

    nobody = node.celeriac("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.3")
    assert nobody.returncode == 69
    assert "No nodes replied within time constraint" in nobody.stderr


# -- the mailbox's rules, on the memory broker (one process) ---------------------------


@pytest.fixture
def memory_node() -> Iterator[tuple[Celeriac, str]]:
    app = memory_app()
    with worker_thread(app, concurrency=2) as consumer:
        listening(app, consumer.ctx.hostname)
        yield app, consumer.ctx.hostname
    app.close()


def test_no_worker_answers_none_as_celery() -> None:
    app = memory_app()
    assert app.control.inspect(timeout=0.2).ping() is None
    assert app.control.ping(timeout=0.2) == []
    assert app.control.broadcast("ping") is None  # no reply wanted
    app.close()


def test_destination_and_pattern_choose_the_nodes(memory_node: tuple[Celeriac, str]) -> None:
    app, hostname = memory_node
    pong = {hostname: {"ok": "pong"}}
    assert app.control.inspect(destination=[hostname]).ping() == pong
    assert app.control.inspect(destination=hostname).ping() == {"ok": "pong"}
    assert app.control.inspect(destination=["other@host"], timeout=0.3).ping() is None
    assert app.control.inspect(pattern="test-worker@*", matcher="glob", timeout=0.3).ping() == pong
    assert app.control.inspect(pattern="^test-", matcher="pcre", timeout=0.3).ping() == pong
    assert app.control.inspect(pattern="x*", matcher="glob", timeout=0.3).ping() is None


def test_unknown_command_and_bad_arguments_answer_celerys_error(
    memory_node: tuple[Celeriac, str],
) -> None:
    app, hostname = memory_node
    dest = [hostname]
    assert app.control.broadcast("nope", reply=True, destination=dest) == [
        {hostname: {"error": "KeyError('nope')"}}
    ]
    bad = app.control.rate_limit("x", "ten per second", destination=dest, reply=True)
    assert bad is not None and bad[0][hostname]["error"].startswith("Invalid rate limit string")
    grow = app.control.pool_grow(1, destination=dest, reply=True)
    assert grow is not None and "NotImplementedError" in grow[0][hostname]["error"]


def test_expired_commands_are_dropped(memory_node: tuple[Celeriac, str]) -> None:
    app, hostname = memory_node

    async def ask(expires: float) -> object:
        ops = (await app.abroker()).operations()
        async with await ops.subscribe_replies("me") as replies:
            command = {
                "method": "ping",
                "arguments": {},
                "destination": [hostname],
                "pattern": None,
                "matcher": None,
                "ticket": "t",
                "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": "me"},
            }
            await ops.send_command(command, {"clock": clock(), "expires": expires})
            got = await replies.get(0.3)
            return got.body if got else None

    assert run_sync(lambda: ask(time.time() - 1)) is None
    assert run_sync(lambda: ask(time.time() + 5)) == {hostname: {"ok": "pong"}}


def test_hello_from_a_starting_celery_worker_merges_revokes(
    memory_node: tuple[Celeriac, str],
) -> None:
    app, hostname = memory_node
    theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
    app.control.revoke(ours, destination=[hostname])
    arguments = {"from_node": "celery@peer", "revoked": [theirs]}
    replies = app.control.broadcast("hello", arguments, destination=[hostname], reply=True)
    assert replies is not None
    answer = replies[0][hostname]
    assert {theirs, ours} <= set(answer["revoked"]) and answer["clock"] > 0
    assert theirs in app.control.inspect(destination=hostname).revoked()
