"""celeriac on Redis against Celery, Dramatiq, Huey and Taskiq, same Redis, same run.

    python bench/redis_vs_peers.py [--tasks N] [--latency-calls N] [--only WORKLOAD ...]

Every measurement runs in a fresh process, after a ``FLUSHDB`` of a dedicated
database (``redis://127.0.0.1:6379/12`` unless ``BENCH_REDIS_URL`` says
otherwise), the systems taking turns. Every system's task does the same
thing: one ``INCR`` on a counter key, then returns 1 (see
``bench/apps/redis_common.py``); every system stores its results in Redis.
See ``bench/README.md`` for what each workload means and each peer's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.worker_process import Worker, round_trips  # noqa: E402

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DONE_KEY = "bench:done"  # as bench.apps.redis_common.DONE_KEY
BATCH = 1000
"""Messages per batch call in the ``batch`` workload, the same for every system."""
POLL = 0.02
"""Seconds between two reads of the done counter while a worker drains."""
FOOTPRINT_TASKS = 10_000
PREFETCH = "32"
RUN_TIMEOUT = 240.0
"""Seconds one measurement (one subprocess) may take before it is killed."""
DRAIN_TIMEOUT = 150.0
SYSTEMS = ("celeriac", "celery", "dramatiq", "huey", "taskiq")
WORKLOADS = ("serial", "batch", "drain", "drain_prefetch", "latency", "footprint")
PACKAGES = {  # system -> (module to find, pip name)
    "celery": ("celery", "celery"),
    "dramatiq": ("dramatiq", "dramatiq"),
    "huey": ("huey", "huey"),
    "taskiq": ("taskiq_redis", "taskiq taskiq-redis"),
}

# Worker command lines (after ``python``), each system's best 2-core setting found here.
WORKERS: dict[str, list[str]] = {
    "celeriac": ["-m", "celeriac", "-A", "bench.apps.celeriac_redis", "worker", "-l", "WARNING"],
    "celery": [
        "-m",
        "celery",
        "-A",
        "bench.apps.celery_redis",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-l",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ],
    "dramatiq": ["-m", "dramatiq", "bench.apps.dramatiq_redis", "-p", "2", "-t", "8"],
    "huey": [
        "-m",
        "huey.bin.huey_consumer",
        "bench.apps.huey_redis.huey",
        "-q",
        "-w",
        "2",
        "-k",
        "process",
        "-d",
        "0.001",
        "-m",
        "0.05",
    ],
    "taskiq": [
        "-m",
        "taskiq",
        "worker",
        "bench.apps.taskiq_redis_app:broker",
        "--workers",
        "2",
        "--log-level",
        "WARNING",
    ],
}
for _name, _command in WORKERS.items():
    _command.extend(os.environ.get(f"BENCH_{_name.upper()}_WORKER", "").split())
TASKIQ_CHECK_INTERVAL = 0.001
"""``wait_result(check_interval=...)``: Taskiq polls its result store (default 0.2 s)."""


# -- one measurement, in its own process ----------------------------------------------


class Queue:
    """What a workload needs from a task queue: enqueue, batch, round trip, worker."""

    name = ""

    def enqueue(self) -> None:
        raise NotImplementedError

    def enqueue_many(self, n: int) -> None:
        """Enqueue n tasks the fastest way the system offers (a loop if it has no batch)."""
        for _ in range(n):
            self.enqueue()

    def batch(self, n: int) -> None:
        raise NotImplementedError  # no batch enqueue API: n/a

    def round_trip(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CeleriacQueue(Queue):
    name = "celeriac"

    def __init__(self) -> None:
        from bench.apps import celeriac_redis

        self.app, self.noop = celeriac_redis.app, celeriac_redis.noop

    def enqueue(self) -> None:
        self.noop.delay()

    def enqueue_many(self, n: int) -> None:
        for start in range(0, n, BATCH):
            self.batch(min(BATCH, n - start))

    def batch(self, n: int) -> None:
        self.app.send_many([self.noop.s() for _ in range(n)])

    def round_trip(self) -> None:
        self.noop.delay().get(timeout=60)


class CeleryQueue(Queue):
    name = "celery"

    def __init__(self) -> None:
        from celery import group

        from bench.apps import celery_redis

        self.group, self.noop = group, celery_redis.noop

    def enqueue(self) -> None:
        self.noop.delay()

    def enqueue_many(self, n: int) -> None:
        for start in range(0, n, BATCH):
            self.batch(min(BATCH, n - start))

    def batch(self, n: int) -> None:
        self.group(self.noop.s() for _ in range(n)).apply_async()

    def round_trip(self) -> None:
        self.noop.delay().get(timeout=60)


class DramatiqQueue(Queue):
    name = "dramatiq"

    def __init__(self) -> None:
        import dramatiq

        from bench.apps import dramatiq_redis

        self.group, self.noop = dramatiq.group, dramatiq_redis.noop

    def enqueue(self) -> None:
        self.noop.send()

    def enqueue_many(self, n: int) -> None:
        for start in range(0, n, BATCH):
            self.batch(min(BATCH, n - start))

    def batch(self, n: int) -> None:
        self.group(self.noop.message() for _ in range(n)).run()  # type: ignore[no-untyped-call]

    def round_trip(self) -> None:
        self.noop.send().get_result(block=True, timeout=60_000)


class HueyQueue(Queue):
    name = "huey"

    def __init__(self) -> None:
        from bench.apps import huey_redis

        self.noop = huey_redis.noop

    def enqueue(self) -> None:
        self.noop()

    def round_trip(self) -> None:
        self.noop().get(blocking=True, timeout=60)


class TaskiqQueue(Queue):
    """Taskiq is async-only: each call is ``await noop.kiq()`` on one event loop."""

    name = "taskiq"

    def __init__(self) -> None:
        from bench.apps import taskiq_redis_app

        self.broker, self.noop = taskiq_redis_app.broker, taskiq_redis_app.noop
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.broker.startup())

    def enqueue(self) -> None:
        self.loop.run_until_complete(self.noop.kiq())

    def enqueue_many(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.noop.kiq()

        self.loop.run_until_complete(go())

    def serial(self, n: int) -> float:
        """The timed loop runs inside the event loop: ``await noop.kiq()`` n times."""

        async def go() -> float:
            started = time.perf_counter()
            for _ in range(n):
                await self.noop.kiq()
            return time.perf_counter() - started

        return self.loop.run_until_complete(go())

    def round_trip(self) -> None:
        async def go() -> None:
            task = await self.noop.kiq()
            result = await task.wait_result(check_interval=TASKIQ_CHECK_INTERVAL, timeout=60)
            assert result.return_value == 1, result

        self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.broker.shutdown())
        self.loop.close()


QUEUES: dict[str, type[Queue]] = {
    "celeriac": CeleriacQueue,
    "celery": CeleryQueue,
    "dramatiq": DramatiqQueue,
    "huey": HueyQueue,
    "taskiq": TaskiqQueue,
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BENCH_REDIS_URL": URL}


def serial(q: Queue, n: int) -> dict[str, float]:
    q.enqueue()  # connects; not timed
    if isinstance(q, TaskiqQueue):
        return {"rate": n / q.serial(n)}
    started = time.perf_counter()
    for _ in range(n):
        q.enqueue()
    return {"rate": n / (time.perf_counter() - started)}


def batch(q: Queue, n: int) -> dict[str, float]:
    q.batch(1)  # connects; not timed
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        q.batch(min(BATCH, n - start))
    return {"rate": n / (time.perf_counter() - started)}


def drain(q: Queue, n: int, extra: list[str]) -> dict[str, float]:
    """From the first completion seen to the last: the rate once the worker runs.

    Completions are read from the counter every task increments, so process
    start-up (interpreter, imports, forks, connections) stays out of the figure.
    """
    q.enqueue_many(n)
    counter = redis.Redis.from_url(URL)
    worker = Worker(q.name, [*WORKERS[q.name], *extra], REPO, _env())
    try:
        launched = time.perf_counter()
        first_at = 0.0
        first_done = 0
        while True:
            time.sleep(POLL)
            done = int(counter.get(DONE_KEY) or 0)
            now = time.perf_counter()
            if done and not first_at:
                first_at, first_done = now, done
            if done >= n:
                break
            if now - launched > DRAIN_TIMEOUT:
                raise RuntimeError(f"drain stuck at {done}/{n}:\n{worker.tail()}")
            worker.check()
    finally:
        worker.stop()
        counter.close()
    elapsed = max(now - first_at, POLL)
    return {"rate": (n - first_done) / elapsed, "startup": first_at - launched}


def latency(q: Queue, calls: int) -> dict[str, float]:
    return round_trips(Worker(q.name, WORKERS[q.name], REPO, _env()), q.round_trip, calls)


def footprint(q: Queue) -> dict[str, float]:
    """Bytes of Redis memory per queued task: ``used_memory`` after minus before, / N.

    Also splits the keys the tasks created into results (``*-meta-*``, ``*result*``)
    and the rest (the queue), by ``MEMORY USAGE``.
    """
    client = redis.Redis.from_url(URL)
    q.enqueue()  # connects and creates the queue's keys; not counted
    client.flushdb()
    time.sleep(0.2)
    before = int(client.info("memory")["used_memory"])
    _one_by_one(q, FOOTPRINT_TASKS)
    time.sleep(0.2)
    after = int(client.info("memory")["used_memory"])
    queued = results = 0
    pipe = client.pipeline(transaction=False)
    keys = list(client.scan_iter(count=1000))
    for key in keys:
        pipe.memory_usage(key, samples=0)
    for key, usage in zip(keys, pipe.execute(), strict=True):
        name = key.decode(errors="replace")
        if "-meta-" in name or "result" in name:
            results += int(usage or 0)
        else:
            queued += int(usage or 0)
    client.close()
    return {
        "bytes": (after - before) / FOOTPRINT_TASKS,
        "queue_bytes": queued / FOOTPRINT_TASKS,
        "result_bytes": results / FOOTPRINT_TASKS,
    }


def _one_by_one(q: Queue, n: int) -> None:
    if isinstance(q, TaskiqQueue):
        q.enqueue_many(n)  # awaits kiq() n times, one at a time
    else:
        for _ in range(n):
            q.enqueue()


def measure(system: str, workload: str, n: int, calls: int) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    q = QUEUES[system]()
    try:
        if workload == "serial":
            return serial(q, n)
        if workload == "batch":
            return batch(q, n)
        if workload == "drain":
            return drain(q, n, [])
        if workload == "drain_prefetch":
            return drain(q, n, ["--prefetch", PREFETCH])
        if workload == "footprint":
            return footprint(q)
        return latency(q, calls)
    finally:
        q.close()


# -- the whole run ---------------------------------------------------------------------


def run_one(system: str, workload: str, n: int, calls: int) -> dict[str, float] | str:
    """One measurement in a fresh process on a flushed database; a string says why not."""
    client = redis.Redis.from_url(URL)
    client.flushdb()
    args = ["--one", system, workload, "--tasks", str(n), "--latency-calls", str(calls)]
    try:
        done = subprocess.run(
            [sys.executable, __file__, *args],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {RUN_TIMEOUT:.0f}s"
    finally:
        client.flushdb()
        client.close()
    if done.returncode != 0:
        return f"failed (exit {done.returncode}; see stderr above)"
    lines = done.stdout.decode().strip().splitlines()
    result: dict[str, float] | str = json.loads(lines[-1])
    return result


def applicable(system: str, workload: str) -> bool:
    if workload == "batch":
        return system in ("celeriac", "celery", "dramatiq")
    if workload == "drain_prefetch":
        return system == "celeriac"
    return True


def preflight(systems: list[str]) -> None:
    """Fail now, with the fix, if Redis is down or a peer is not installed."""
    missing = [
        f"{system} (pip install {PACKAGES[system][1]})"
        for system in systems
        if system in PACKAGES and importlib.util.find_spec(PACKAGES[system][0]) is None
    ]
    if missing:
        sys.exit(
            "redis_vs_peers: missing peer(s): "
            + ", ".join(missing)
            + "; or leave them out with --systems"
        )
    try:
        redis.Redis.from_url(URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        sys.exit(
            f"redis_vs_peers: cannot reach Redis at {URL} ({exc}); start it, e.g.: "
            'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save ""'
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10000, help="tasks per workload")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--only", choices=WORKLOADS, action="append", help="run these only")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        system, workload = args.one
        print(json.dumps(measure(system, workload, args.tasks, args.latency_calls)), flush=True)
        return

    systems: list[str] = args.systems
    preflight(systems)
    print(
        f"{os.cpu_count()} cores, {args.tasks} tasks per workload, "
        f"{args.latency_calls} round trips, Redis {URL}",
        flush=True,
    )
    results: dict[tuple[str, str], dict[str, float] | str] = {}
    started = time.perf_counter()
    for workload in args.only or WORKLOADS:
        for system in systems:
            if not applicable(system, workload):
                continue
            outcome = run_one(system, workload, args.tasks, args.latency_calls)
            results[system, workload] = outcome
            print(f"  {workload} {system}: {outcome}", file=sys.stderr, flush=True)
    _table(systems, results)
    _targets(results)
    print(f"\n(total {time.perf_counter() - started:.0f}s)")


LABELS: dict[str, tuple[str, bool]] = {
    # workload/field in the result: label (unit), higher is better
    "serial/rate": ("enqueue, 1 process, one by one (tasks/s)", True),
    "batch/rate": (f"enqueue, batches of {BATCH} (tasks/s)", True),
    "drain/rate": ("drain, one worker on 2 cores (tasks/s)", True),
    "drain_prefetch/rate": (f"drain, celeriac --prefetch {PREFETCH} (tasks/s)", True),
    "latency/p50": ("round trip p50, idle worker (ms)", False),
    "latency/p99": ("round trip p99, idle worker (ms)", False),
    "footprint/bytes": ("Redis memory per queued task (bytes)", False),
}


def _value(results: dict[tuple[str, str], dict[str, float] | str], system: str, key: str) -> Any:
    workload, _, field = key.partition("/")
    if workload == "drain_prefetch" and system != "celeriac":
        workload = "drain"  # the peers' drain row again: they have no such knob here
    got = results.get((system, workload))
    if isinstance(got, dict):
        return got[field]
    return got  # None: not run or n/a; str: what went wrong


def _table(systems: list[str], results: dict[tuple[str, str], dict[str, float] | str]) -> None:
    header = ["metric", *systems, "celeriac/dramatiq (>1: celeriac better)"]
    rows: list[list[str]] = []
    for key, (label, higher_better) in LABELS.items():
        workload = key.partition("/")[0]
        if not any((s, workload) in results for s in systems):
            continue
        cells = [label]
        for system in systems:
            v = _value(results, system, key)
            cells.append(_fmt(v) if isinstance(v, float) else "n/a" if v is None else "error")
        ours, theirs = _value(results, "celeriac", key), _value(results, "dramatiq", key)
        if isinstance(ours, float) and isinstance(theirs, float) and ours and theirs:
            cells.append(f"{(ours / theirs if higher_better else theirs / ours):.2f}x")
        else:
            cells.append("n/a")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    for system in systems:
        got = results.get((system, "footprint"))
        if isinstance(got, dict):
            print(
                f"  {system}: {got['bytes']:,.0f} B/task by used_memory; by MEMORY USAGE "
                f"{got['queue_bytes']:,.0f} B in queue keys + {got['result_bytes']:,.0f} B "
                "in result keys"
            )


TARGETS = (  # workload/field, label, target, higher is better
    ("serial/rate", "enqueue one by one >= 15,000/s", 15_000.0, True),
    ("batch/rate", "enqueue in batch >= 100,000/s", 100_000.0, True),
    ("drain/rate", "drain >= 20,000/s (default worker)", 20_000.0, True),
    ("drain_prefetch/rate", "drain >= 20,000/s (--prefetch 32)", 20_000.0, True),
    ("latency/p50", "round trip p50 <= 0.5 ms", 0.5, False),
)


def _targets(results: dict[tuple[str, str], dict[str, float] | str]) -> None:
    print("\nThe issue's targets (celeriac):")
    for key, label, target, higher_better in TARGETS:
        ours = _value(results, "celeriac", key)
        if not isinstance(ours, float):
            continue
        met = ours >= target if higher_better else ours <= target
        line = f"  {label}: {_fmt(ours)} -> {'met' if met else 'NOT met'}"
        theirs = _value(results, "dramatiq", key)
        if higher_better and isinstance(theirs, float) and theirs:
            ratio = ours / theirs
            line += f"; {ratio:.2f}x Dramatiq -> 5x {'met' if ratio >= 5 else 'NOT met'}"
        print(line)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    main()
