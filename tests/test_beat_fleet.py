"""Beat run as users run it: several ``celeriac beat`` processes on one broker, one leader.

Three beats share a broker, with an entry every second. After the first tick
the leader is SIGKILLed; another beat takes over and the run goes on to 20 s.
The test then reads every message beat sent from the queue: one per tick (20,
give or take the one at the edge) and no two with the same id, on every broker
that holds beat's lease (SQLite, Redis in both layouts, RabbitMQ, PostgreSQL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.beat import tick_id
from celeriac.brokers import Broker, broker_from_url
from celeriac.testing import WorkerProcess

from .conformance.targets import BROKERS, Target, connected
from .worker_processes import ROOT, run_lines, wait_for

pytestmark = pytest.mark.slow

FLEET = [t for t in BROKERS if t.name in ("sqlite", "redis", "redis-kombu", "amqp", "postgres")]
RUN = 19.5
"""Seconds from the first tick to stopping the beats: ticks 0..19, 20 sends."""
KILL_AT = 8.0


class BeatProcess:
    """``celeriac -A tests.apps.periodic beat`` as a subprocess."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "tests.apps.periodic", "beat", *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"beat did not stop on SIGTERM:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def beat_env(url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": f"sqlite:///{tmp_path / 'results.db'}",
        "RUN_LOG": str(tmp_path / "runs.log"),
    }


@pytest.fixture(params=FLEET, ids=lambda case: case.name)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    case: Target = request.param
    url = case.make_url(tmp_path)
    return url.replace("&visibility_timeout=1", "")  # the conformance lease is not a user's


@pytest.fixture
def beats(broker_url: str, tmp_path: Path) -> Iterator[list[BeatProcess]]:
    env = beat_env(broker_url, tmp_path)
    fleet = [BeatProcess(env, tmp_path / f"beat{n}.log") for n in range(3)]
    yield fleet
    for beat in fleet:
        if beat.proc.poll() is None:
            beat.proc.kill()
            beat.proc.wait()


async def sent(broker: Broker, queue: str = "celery") -> list[str]:
    """The ids of every message in ``queue``, taken off it."""
    consumer = broker.consumer([queue], "beat-test")
    ids: list[str] = []
    while deliveries := await consumer.fetch(100, 0.5):
        for delivery in deliveries:
            ids.append(delivery.message.id)
            await consumer.ack(delivery)
    await consumer.close()
    return ids


def leader_pid(fleet: list[BeatProcess], broker: Broker) -> int:
    holder = asyncio.run(_holder(broker.url))
    assert holder is not None, "nobody leads"
    pid = int(holder[0].split(".")[-2])
    assert pid in [b.proc.pid for b in fleet], holder
    return pid


async def _holder(url: str) -> tuple[str, float] | None:
    async with connected(url) as broker:
        return await broker.beat_store().holder()


async def _ready(url: str) -> int:
    async with connected(url) as broker:
        return (await broker.stats("celery")).ready


def test_three_beats_send_every_tick_once_across_a_leader_kill(
    broker_url: str, beats: list[BeatProcess]
) -> None:
    broker = broker_from_url(broker_url)
    wait_for(lambda: asyncio.run(_ready(broker_url)) > 0, 30, "the first tick")
    first = time.monotonic()
    killed = leader_pid(beats, broker)
    time.sleep(max(0.0, first + KILL_AT - time.monotonic()))
    assert leader_pid(beats, broker) == killed, "the lease moved without a failure"
    os.kill(killed, signal.SIGKILL)
    time.sleep(max(0.0, first + RUN - time.monotonic()))
    survivors = [b for b in beats if b.proc.pid != killed]
    new_leader = leader_pid(beats, broker)
    assert new_leader != killed
    for beat in survivors:
        beat.stop()

    ids = asyncio.run(_drain(broker_url))
    logs = "\n".join(b.log() for b in beats)
    assert len(ids) == len(set(ids)), f"a tick was sent twice:\n{logs}"
    assert 19 <= len(ids) <= 21, f"{len(ids)} sends in 20 s:\n{logs}"
    assert "leading" in logs


async def _drain(url: str) -> list[str]:
    async with connected(url) as broker:
        return await sent(broker)


def test_workers_with_embedded_beat_run_each_tick_once(tmp_path: Path) -> None:
    """``worker -B`` on two workers: each tick runs once; when the worker whose beat leads
    is SIGKILLed its beat goes with it, and the other worker's beat carries on."""
    env = beat_env(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path)
    workers = [
        WorkerProcess(
            "tests.apps.periodic",
            "-B",
            "-P",
            "thread",
            "-c",
            "2",
            "-n",
            f"w{n}@%h",
            cwd=ROOT,
            env=env,
            log=tmp_path / f"worker{n}.log",
        ).start()
        for n in range(2)
    ]
    try:
        wait_for(lambda: len(run_lines(env)) >= 3, 30, "three ticks ran")
        client = Celeriac("client", broker=env["CELERIAC_BROKER_URL"], set_as_current=False)
        asked = time.time()
        scheduled = client.control.inspect(timeout=2.0).scheduled() or {}
        assert set(scheduled) == {"w0@" + socket.gethostname(), "w1@" + socket.gethostname()}
        for entries in scheduled.values():
            (entry,) = entries
            assert entry["request"]["name"] == "tests.apps.periodic.tick"
            eta = datetime.fromisoformat(entry["eta"]).timestamp()
            assert entry["request"]["id"] == tick_id("every-second", eta)
            assert asked - 1 < eta < asked + 2
        client.close()
        holder = asyncio.run(_holder(env["CELERIAC_BROKER_URL"]))
        assert holder is not None
        beat_pid = int(holder[0].split(".")[-2])
        # The thread pool forks nothing but the beat: the leader's worker is the victim.
        (victim,) = [w for w in workers if w.children() == [beat_pid]]
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        wait_for(
            lambda: not Path(f"/proc/{beat_pid}").exists() or _zombie(beat_pid),
            10,
            "the killed worker's beat exited",
        )
        count = len(run_lines(env))
        wait_for(lambda: len(run_lines(env)) >= count + 8, 30, "the ticks go on")
    finally:
        for worker in workers:
            worker.stop()
    ids = [fields[0] for fields in run_lines(env)]
    assert len(ids) == len(set(ids)), "a tick ran twice"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_dry_run_prints_the_leader_and_next_runs(tmp_path: Path) -> None:
    env = beat_env(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tests.apps.periodic", "beat", "--dry-run"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("leader: none\n")
    assert "every-second: tests.apps.periodic.tick <freq: 1.00 second>" in out
    assert "last run: never" in out and out.count("+00:00") == 3
