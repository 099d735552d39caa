"""celeriac on its embedded SQLite broker against Huey's ``SqliteHuey``, same machine, same run.

    python bench/sqlite_vs_huey.py [--tasks N] [--latency-calls N]

Every measurement runs in a fresh process on a fresh database file in a
temporary directory, celeriac and Huey alternating, with no-op tasks that
return 1 (Huey stores no result for ``None``). Both run their durable
defaults: celeriac's publishes commit with ``synchronous=FULL``; Huey leaves
SQLite's default, which is FULL too. See ``bench/README.md`` for what each
workload means and how start-up time is kept out of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
THREADS = 8
BATCH = 100
POLL = 0.02
"""Seconds between two looks at the result store while a worker drains."""
HUEY_CONSUMER = os.environ.get("BENCH_HUEY_CONSUMER", "-w 2 -k process -d 0.001 -m 0.05").split()
"""Huey's best 2-core setting found here; ``-d``/``-m`` cut its idle polling
from 0.1-10 s to 1-50 ms, close to celeriac's 1-50 ms (see README)."""
CELERIAC_WORKER = [
    "-m",
    "celeriac.cli",
    "-A",
    "bench.apps.celeriac_noop",
    "worker",
    "-l",
    "WARNING",
    *os.environ.get("BENCH_CELERIAC_WORKER", "").split(),
]
WORKLOADS = ("serial", "threads", "batch", "drain", "drain_prefetch", "latency")
PREFETCH = "32"
"""``drain_prefetch`` runs celeriac's worker with ``--prefetch 32`` (Huey has no such knob)."""


# -- one measurement, in its own process ----------------------------------------------


class Queue:
    """What a workload needs from a task queue: enqueue, batch, wait, worker, done count."""

    def enqueue(self) -> Any:
        raise NotImplementedError

    def enqueue_batch(self, n: int) -> None:
        raise NotImplementedError

    def round_trip(self) -> None:
        raise NotImplementedError

    def worker(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def stop(self, worker: subprocess.Popen[bytes]) -> None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    done_sql = ""
    """Counts the stored results, read by a separate connection while a worker drains."""


class CeleriacQueue(Queue):
    def __init__(self) -> None:
        from bench.apps import celeriac_noop

        self.app, self.noop = celeriac_noop.app, celeriac_noop.noop

    def enqueue(self) -> Any:
        return self.noop.delay()

    def enqueue_batch(self, n: int) -> None:
        self.app.send_many([self.noop.s() for _ in range(n)])

    def round_trip(self) -> None:
        self.noop.delay().get(timeout=60)

    def worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, *CELERIAC_WORKER], cwd=REPO, env=_env())

    done_sql = (
        "SELECT count(*) FROM celeriac_results"
        ' WHERE instr(value, CAST(\'"status":"SUCCESS"\' AS BLOB)) > 0'
    )


class HueyQueue(Queue):
    def __init__(self) -> None:
        from bench.apps import huey_noop

        self.huey, self.noop = huey_noop.huey, huey_noop.noop

    def enqueue(self) -> Any:
        return self.noop()

    def round_trip(self) -> None:
        self.noop().get(blocking=True, timeout=60)

    def worker(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "huey.bin.huey_consumer",
            "bench.apps.huey_noop.huey",
            "-q",
            *HUEY_CONSUMER,
        ]
        return subprocess.Popen(command, cwd=REPO, env=_env())

    def stop(self, worker: subprocess.Popen[bytes]) -> None:
        worker.send_signal(signal.SIGINT)  # Huey's graceful signal
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    done_sql = "SELECT count(*) FROM kv WHERE queue = 'bench'"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def serial(q: Queue, n: int) -> dict[str, float]:
    q.enqueue()  # connects; not timed
    started = time.perf_counter()
    for _ in range(n):
        q.enqueue()
    return {"rate": n / (time.perf_counter() - started)}


def threads(q: Queue, n: int) -> dict[str, float]:
    per_thread = n // THREADS
    barrier = threading.Barrier(THREADS + 1)

    def produce() -> None:
        q.enqueue()  # each thread connects first; not timed
        barrier.wait()
        for _ in range(per_thread):
            q.enqueue()

    pool = [threading.Thread(target=produce) for _ in range(THREADS)]
    for t in pool:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    return {"rate": per_thread * THREADS / (time.perf_counter() - started)}


def batch(q: Queue, n: int) -> dict[str, float]:
    q.enqueue_batch(1)  # connects; not timed
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        q.enqueue_batch(min(BATCH, n - start))
    return {"rate": n / (time.perf_counter() - started)}


def drain(q: Queue, n: int, db: str) -> dict[str, float]:
    """From the first stored result to the last: the rate once the worker runs.

    Process start-up (interpreter, imports, forking, first connection) ends
    before the first result, so it stays out of the figure for both queues.
    """
    try:
        q.enqueue_batch(n)
    except NotImplementedError:
        for _ in range(n):
            q.enqueue()
    reader = sqlite3.connect(db, isolation_level=None)
    worker = q.worker()
    try:
        launched = time.perf_counter()
        first_at = first_done = 0.0
        while True:
            time.sleep(POLL)
            try:
                (done,) = reader.execute(q.done_sql).fetchone()
            except sqlite3.OperationalError:  # the table is not there yet
                continue
            now = time.perf_counter()
            if done and not first_at:
                first_at, first_done = now, done
            if done >= n:
                break
            if now - launched > 120:
                raise RuntimeError(f"drain stuck at {done}/{n}")
    finally:
        q.stop(worker)
        reader.close()
    elapsed = max(now - first_at, POLL)
    return {"rate": (n - first_done) / elapsed, "startup": first_at - launched}


def latency(q: Queue, calls: int) -> dict[str, float]:
    worker = q.worker()
    try:
        for _ in range(10):  # waits for the worker to start; not timed
            q.round_trip()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            q.round_trip()
            times.append(time.perf_counter() - started)
    finally:
        q.stop(worker)
    times.sort()
    return {
        "p50": statistics.median(times) * 1000,
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
    }


def measure(system: str, workload: str, n: int, calls: int, db: str) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    q: Queue = CeleriacQueue() if system == "celeriac" else HueyQueue()
    if workload == "serial":
        return serial(q, n)
    if workload == "threads":
        return threads(q, n)
    if workload == "batch":
        return batch(q, n)
    if workload in ("drain", "drain_prefetch"):
        return drain(q, n, db)
    return latency(q, calls)


# -- the whole run ---------------------------------------------------------------------


def run_one(system: str, workload: str, n: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp:
        db = str(Path(tmp) / f"{system}.db")
        env = {**_env(), "BENCH_CELERIAC_DB": db, "BENCH_HUEY_DB": db}
        if workload == "drain_prefetch":
            env["BENCH_CELERIAC_WORKER"] = (
                f"{env.get('BENCH_CELERIAC_WORKER', '')} --prefetch {PREFETCH}"
            )
        args = ["--one", system, workload, "--tasks", str(n), "--latency-calls", str(calls)]
        out = subprocess.run(
            [sys.executable, __file__, *args],
            cwd=REPO,
            env=env,
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
        result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10000, help="tasks per workload")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--only", choices=WORKLOADS, action="append", help="run these only")
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        system, workload = args.one
        db = os.environ["BENCH_CELERIAC_DB"]
        print(json.dumps(measure(system, workload, args.tasks, args.latency_calls, db)), flush=True)
        return

    print(
        f"{os.cpu_count()} cores, {args.tasks} tasks per workload, "
        f"{args.latency_calls} round trips; huey_consumer {' '.join(HUEY_CONSUMER)}",
        flush=True,
    )
    rows: list[tuple[str, str, str, str]] = []
    started = time.perf_counter()
    for workload in args.only or WORKLOADS:
        ours = run_one("celeriac", workload, args.tasks, args.latency_calls)
        theirs = (
            None
            if workload == "batch"
            else run_one("huey", workload, args.tasks, args.latency_calls)
        )
        rows.extend(_rows(workload, ours, theirs))
        print(f"  {workload}: celeriac {ours}  huey {theirs}", file=sys.stderr, flush=True)
    _table(rows)
    print(f"\n(total {time.perf_counter() - started:.0f}s)")


LABELS: dict[str, tuple[str, str, bool]] = {
    # key in the result: label, unit, higher is better
    "serial/rate": ("enqueue, 1 thread, one by one", "tasks/s", True),
    "threads/rate": (f"enqueue, {THREADS} threads, one by one", "tasks/s", True),
    "batch/rate": (f"enqueue, batches of {BATCH} (send_many)", "tasks/s", True),
    "drain/rate": ("drain, one worker on 2 cores", "tasks/s", True),
    "drain_prefetch/rate": (f"drain, celeriac --prefetch {PREFETCH}", "tasks/s", True),
    "latency/p50": ("round trip p50 (idle worker)", "ms", False),
    "latency/p99": ("round trip p99 (idle worker)", "ms", False),
}


def _rows(
    workload: str, ours: dict[str, float], theirs: dict[str, float] | None
) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, (label, unit, higher_better) in LABELS.items():
        name, _, field = key.partition("/")
        if name != workload:
            continue
        a = ours[field]
        b = None if theirs is None else theirs[field]
        ratio = "n/a" if b is None else f"{(a / b if higher_better else b / a):.2f}x"
        rows.append((f"{label} ({unit})", _fmt(a), "n/a" if b is None else _fmt(b), ratio))
    return rows


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("metric", "celeriac", "huey", "ratio (>1: celeriac better)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    main()
