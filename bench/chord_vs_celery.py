"""A chord of N no-op tasks on Redis: celeriac against Celery, same machine, same run.

    python bench/chord_vs_celery.py [--tasks 10000]

For each system: a fresh Redis database, one worker using both cores
(celeriac: `celeriac -A bench.apps.celeriac_chord worker`, the default process
pool; Celery: `celery -A bench.apps.celery_chord worker -P prefork -c 2`), a
warm-up round trip so start-up is not timed, then the time from calling
`chord(noop.s() for _ in range(N))(count.s())` to `get()` returning N. The
figure includes publishing the header, running every task, counting the
chord in the result store and running the body.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

WORKERS = {
    "celeriac": [sys.executable, "-m", "celeriac", "-A", "bench.apps.celeriac_chord", "worker",
                 "-l", "WARNING"],
    "celery": [sys.executable, "-m", "celery", "-A", "bench.apps.celery_chord", "worker",
               "-P", "prefork", "-c", "2", "-l", "WARNING", "--without-gossip", "--without-mingle",
               "--without-heartbeat"],
}  # fmt: skip


def _flush() -> None:
    import redis

    redis.Redis.from_url(URL).flushdb()


def _modules(system: str) -> Any:
    return importlib.import_module(f"bench.apps.{system}_chord")


def _chord(system: str, n: int) -> Any:
    module = _modules(system)
    chord: Any = importlib.import_module(system).chord
    return chord(module.noop.s() for _ in range(n))(module.count.s())


def measure(system: str, n: int) -> float:
    _flush()
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_REDIS_URL": URL}
    worker = subprocess.Popen(WORKERS[system], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        module = _modules(system)
        module.noop.delay().get(timeout=60)  # the worker is up; not timed
        started = time.perf_counter()
        result = _chord(system, n).get(timeout=600)
        elapsed = time.perf_counter() - started
        if result != n:
            raise RuntimeError(f"{system}: chord body got {result} results, expected {n}")
        return elapsed
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--only", choices=sorted(WORKERS))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ["BENCH_REDIS_URL"] = URL
    times = {s: measure(s, args.tasks) for s in ([args.only] if args.only else WORKERS)}
    print(f"{os.cpu_count()} cores, chord of {args.tasks} no-op tasks on Redis ({URL})\n")
    print("| system   | seconds | tasks/s |")
    print("| -------- | ------- | ------- |")
    for system, seconds in times.items():
        print(f"| {system:<8} | {seconds:7.2f} | {args.tasks / seconds:7,.0f} |")
    if len(times) == 2:
        print(
            f"\ncelery / celeriac time: {times['celery'] / times['celeriac']:.2f}x"
            " (>1: celeriac faster)"
        )


if __name__ == "__main__":
    main()
