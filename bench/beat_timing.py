"""Beat on time: sends, drift, lateness, and a leader's SIGKILL, against Celery's beat.

    python bench/beat_timing.py [--seconds 30] [--systems celeriac-sqlite celeriac-redis
                                 celeriac-amqp celery-redis]

Each system runs its beat with one entry every second (``bench/apps/celeriac_beat.py``,
``bench/apps/celery_beat.py``) on a fresh broker, and the benchmark takes each message
off the queue as it lands, noting the time. celeriac runs two beats and SIGKILLs the
leader a third of the way in; Celery runs its one beat (a second one would double
every tick). Printed per system: sends against the seconds run (a tick lost or
doubled shows here), the mean interval (drift: Celery schedules each run from the
moment of the last), and each tick's lateness against the one-second grid through
the earliest arrival: the median (steady state; a drifting grid grows it) and the
largest (celeriac: the ticks the new leader sends late after the hand-over).
The floor: a tick cannot land before its second, so the ideal is sends == seconds,
mean 1.000 s, lateness 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeriac.brokers import broker_from_url  # noqa: E402

REDIS = "redis://127.0.0.1:6379/14"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
SYSTEMS = ["celeriac-sqlite", "celeriac-redis", "celeriac-amqp", "celery-redis"]


def broker_urls(system: str, tmp: str) -> tuple[str, str]:
    """(the beat's broker URL, celeriac's URL to read that broker's queue)."""
    prefix = f"bench-beat-{uuid.uuid4().hex[:8]}"
    if system == "celeriac-sqlite":
        url = f"sqlite:///{tmp}/beat.db"
        return url, url
    if system == "celeriac-redis":
        url = f"{REDIS}?prefix={prefix}:"
        return url, url
    if system == "celeriac-amqp":
        url = f"{AMQP}?prefix={prefix}."
        return url, url
    return REDIS, f"{REDIS}?layout=kombu"  # Celery: kombu's list "celery" in db 14


def start_beat(system: str, url: str, tmp: str, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_BROKER": url}
    if system.startswith("celeriac"):
        cmd = [sys.executable, "-m", "celeriac", "-A", "bench.apps.celeriac_beat", "beat"]
    else:
        schedule = f"{tmp}/celerybeat-schedule-{n}"
        cmd = ["celery", "-A", "bench.apps.celery_beat", "beat", "-s", schedule, "-l", "WARNING"]
    log = open(f"{tmp}/beat{n}.log", "wb")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)


async def arrivals(url: str, seconds: float, kill: float | None, beats: list[int]) -> list[float]:
    """Monotonic arrival times of the messages on queue ``celery`` for ``seconds`` after
    the first; at ``kill`` seconds, SIGKILL the leader (the beat whose name holds the lease)."""
    broker = broker_from_url(url)
    await broker.connect()
    consumer = broker.consumer(["celery"], "bench")
    seen: list[float] = []
    killed = kill is None
    try:
        while not seen or time.monotonic() - seen[0] < seconds:
            for delivery in await consumer.fetch(10, 0.01):
                seen.append(time.monotonic())
                await consumer.ack(delivery)
            if kill is not None and not killed and seen and time.monotonic() - seen[0] >= kill:
                holder = await broker.beat_store().holder()
                if holder is not None:
                    pid = int(holder[0].split(".")[-2])
                    os.kill(pid, signal.SIGKILL)
                    beats.remove(pid)
                    killed = True
    finally:
        await consumer.close()
        await broker.close()
    return seen


def measure(system: str, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url, read_url = broker_urls(system, tmp)
        if system == "celery-redis":
            import redis

            redis.Redis.from_url(REDIS).delete("celery")
        count = 2 if system.startswith("celeriac") else 1
        procs = [start_beat(system, url, tmp, n) for n in range(count)]
        pids = [p.pid for p in procs]
        kill = seconds / 3 if count > 1 else None
        try:
            seen = asyncio.run(arrivals(read_url, seconds, kill, pids))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(20)
    seen = [t for t in seen if t - seen[0] < seconds - 0.5]  # ticks 0 .. seconds-1
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    # Tick k is due 1 s after tick k-1: its lateness is its arrival against the grid
    # through the earliest arrival (a grid that drifts, as Celery's does, shows as growth).
    offsets = [t - k for k, t in enumerate(seen)]
    late = sorted(o - min(offsets) for o in offsets)
    return {
        "sends": len(seen),
        "seconds": seconds,
        "mean": statistics.fmean(gaps),
        "p50": late[len(late) // 2],
        "max": late[-1],
        "killed": 1.0 if count > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    args = parser.parse_args()
    print(
        f"{'system':<16} {'sends/seconds':>14} {'mean interval':>14} {'late p50':>9} "
        f"{'late max':>9}  leader killed"
    )
    for system in args.systems:
        r = measure(system, args.seconds)
        print(
            f"{system:<16} {r['sends']:>7.0f}/{r['seconds']:<6.0f} {r['mean']:>13.4f}s "
            f"{r['p50'] * 1000:>7.1f}ms {r['max']:>8.2f}s  "
            f"{'yes' if r['killed'] else 'no (one beat)'}"
        )


if __name__ == "__main__":
    main()
