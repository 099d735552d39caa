"""What task events cost a worker: the same drain with events off and on, same run.

    python bench/events_overhead.py [--tasks 10000] [--rounds 2] [--brokers sqlite redis amqp]
                                    [--listen]

For each broker, ``--rounds`` times, alternating off and on: N no-op tasks
are queued on a fresh broker (a new SQLite file; a new key or name prefix on
Redis and RabbitMQ), then ONE worker starts (``celeriac -A
bench.apps.celeriac_events worker``, default process pool; ``-E`` for "on").
With ``--listen``, a listener (``EventReceiver``) in the benchmark's process
reads the event stream all along, as Flower would, and counts what arrives
(it shares the machine's cores with the worker). The rate covers the stretch from the first
task taken to the queue being empty (``Broker.stats``, polled every 20 ms), so
process start-up stays out. Printed: each rate, the medians, and the ratio
on/off (1.0: no cost; the target is above 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeriac import Celeriac  # noqa: E402
from celeriac.events import EventReceiver  # noqa: E402

POLL = 0.02
REDIS = "redis://127.0.0.1:6379/14"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def urls(broker: str, tmp: str) -> tuple[str, str]:
    """A fresh broker and result store of the kind ``broker``."""
    prefix = f"bench-events-{uuid.uuid4().hex[:8]}"
    if broker == "sqlite":
        url = f"sqlite:///{tmp}/bench.db"
        return url, url
    if broker == "redis":
        url = f"{REDIS}?prefix={prefix}:"
        return url, url
    return f"{AMQP}?prefix={prefix}.", f"{REDIS}?prefix={prefix}:"


class Listener:
    """Counts the events sent on ``app``'s broker, in a thread of its own."""

    def __init__(self, app: Celeriac):
        self.app, self.count = app, 0
        self._listening, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        self._listening.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        broker = await self.app.abroker()
        async with EventReceiver(broker.operations()) as receiver:
            self._listening.set()
            while not self._stop.is_set():
                async for _ in receiver.capture(timeout=0.2):
                    self.count += 1
        await self.app.aclose()


def drain(broker_kind: str, events: bool, n: int, listen: bool) -> tuple[float, int]:
    """Tasks per second of one worker draining ``n`` tasks; and the events seen."""
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        broker_url, backend_url = urls(broker_kind, tmp)
        app = Celeriac("bench", broker=broker_url, backend=backend_url, set_as_current=False)
        sig = app.signature("bench.apps.celeriac_events.noop")
        for start in range(0, n, 1000):
            app.send_many([sig for _ in range(min(1000, n - start))])
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "BENCH_EVENTS_BROKER": broker_url,
            "BENCH_EVENTS_BACKEND": backend_url,
        }
        command = [sys.executable, "-m", "celeriac", "-A", "bench.apps.celeriac_events"]
        command += ["worker", "-l", "WARNING", *(["-E"] if events else [])]
        listener = Listener(app) if listen else contextlib.nullcontext(None)
        with listener as listening:
            worker = subprocess.Popen(command, cwd=REPO, env=env)
            try:
                first, last = _watch(app, n)
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)
            time.sleep(0.5)  # the last events' flush
        app.close()
        return n / max(last - first, POLL), listening.count if listening else -1


def _watch(app: Celeriac, n: int) -> tuple[float, float]:
    """When the first task was taken, and when the queue was empty."""

    async def watch() -> tuple[float, float]:
        broker = await app.abroker()
        first = 0.0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stats = await broker.stats("celery")
            now = time.perf_counter()
            if not first and stats.ready < n:
                first = now
            if stats.ready + stats.reserved + stats.delayed == 0:
                await app.aclose()
                return first, now
            await asyncio.sleep(POLL)
        raise RuntimeError("the drain is stuck")

    return asyncio.run(watch())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--brokers", nargs="+", default=["sqlite", "redis", "amqp"])
    parser.add_argument("--listen", action="store_true", help="read the events meanwhile")
    args = parser.parse_args()
    print(f"{'broker':8} {'events':7} {'tasks/s':>9} {'events seen':>12}")
    summary = []
    for broker in args.brokers:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for events in (False, True):
                rate, seen = drain(broker, events, args.tasks, args.listen)
                rates[events].append(rate)
                state = "on" if events else "off"
                print(f"{broker:8} {state:7} {rate:9.0f} {seen:12d}", flush=True)
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        summary.append(f"{broker:8} off {off:7.0f}/s  on {on:7.0f}/s  ratio on/off {on / off:.2f}")
    print("\n".join(["", "medians:", *summary]))


if __name__ == "__main__":
    main()
