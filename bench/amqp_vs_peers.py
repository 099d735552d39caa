"""celeriac on RabbitMQ against Celery (py-amqp) and Dramatiq (``RabbitmqBroker``), same run.

    python bench/amqp_vs_peers.py [--tasks N] [--latency-calls N] [--only WORKLOAD ...]

Each measurement runs in a fresh process on a fresh vhost (``celeriac-bench``,
deleted afterwards) and a flushed Redis database (``BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/11``) that holds every system's results and the done
counter each task increments. See ``bench/README.md`` for the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VHOST = "celeriac-bench"
AMQP_URL = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
DONE_KEY = "bench:done"  # as bench.apps.redis_common.DONE_KEY
BATCH = 500
POLL = 0.02
DRAIN_TIMEOUT = 90.0
SYSTEMS = ("celeriac", "celery", "dramatiq", "dramatiq_confirm")
"""``dramatiq_confirm``: Dramatiq with ``confirm_delivery=True``, enqueue rows only."""
WORKLOADS = ("serial", "batch", "drain", "drain_prefetch", "latency")
PREFETCH = "32"
WORKERS: dict[str, list[str]] = {
    "celeriac": [
        *("-m", "celeriac", "-A", "bench.apps.celeriac_amqp", "worker", "-l", "WARNING"),
        *os.environ.get("BENCH_CELERIAC_WORKER", "").split(),
    ],
    "celery": [
        *("-m", "celery", "-A", "bench.apps.celery_amqp", "worker", "-P", "prefork", "-c", "2"),
        *("-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"),
    ],
    "dramatiq": ["-m", "dramatiq", "bench.apps.dramatiq_amqp", "-p", "2", "-t", "8"],
}


def env(system: str = "") -> dict[str, str]:
    return {
        **os.environ,
        "BENCH_AMQP_URL": AMQP_URL,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_DRAMATIQ_CONFIRM": "1" if system == "dramatiq_confirm" else "0",
        "PYTHONPATH": str(REPO),
    }


def runs(system: str, workload: str) -> bool:
    if system == "dramatiq_confirm":
        return workload in ("serial", "batch")
    return workload != "drain_prefetch" or system == "celeriac"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=120, check=False)


def fresh() -> None:
    import redis

    rabbitmqctl("delete_vhost", VHOST)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    redis.Redis.from_url(REDIS_URL).flushdb()


# -- inside one measurement process ------------------------------------------------


class System:
    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = "dramatiq" if name.startswith("dramatiq") else name
        if name == "celeriac":
            from bench.apps import celeriac_amqp as celeriac_app

            self.app, self.task = celeriac_app.app, celeriac_app.noop
        elif name == "celery":
            from bench.apps import celery_amqp as celery_app

            self.app, self.task = celery_app.app, celery_app.noop
        else:
            from bench.apps import dramatiq_amqp as dramatiq_app

            self.app, self.task = dramatiq_app.broker, dramatiq_app.noop

    def enqueue(self) -> Any:
        return self.task.send() if self.kind == "dramatiq" else self.task.delay()

    def enqueue_batch(self, n: int) -> None:
        if self.name == "celeriac":
            self.app.send_many([self.task.s() for _ in range(n)])
        elif self.name == "celery":
            with self.app.producer_or_acquire() as producer:  # one connection, as Celery documents
                for _ in range(n):
                    self.task.apply_async(producer=producer)
        else:
            for _ in range(n):  # Dramatiq has no batch enqueue: group() sends one by one
                self.task.send()

    def get(self, handle: Any) -> None:
        if self.kind == "dramatiq":
            handle.get_result(block=True, timeout=60_000)
        else:
            handle.get(timeout=60)


def measure(system_name: str, workload: str, tasks: int, calls: int) -> dict[str, float]:
    system = System(system_name)
    system.enqueue()  # connect, declare
    if workload == "serial":
        start = time.perf_counter()
        for _ in range(tasks):
            system.enqueue()
        return {"rate": tasks / (time.perf_counter() - start)}
    if workload == "batch":
        start = time.perf_counter()
        for _ in range(tasks // BATCH):
            system.enqueue_batch(BATCH)
        return {"rate": (tasks // BATCH) * BATCH / (time.perf_counter() - start)}
    if workload == "drain":
        return drain(system, tasks, WORKERS[system.name])
    if workload == "drain_prefetch":
        return drain(system, tasks, [*WORKERS[system.name], "--prefetch", PREFETCH])
    return latency(system, calls)


def drain(system: System, tasks: int, command: list[str]) -> dict[str, float]:
    import redis

    system.enqueue_batch(tasks - 1)  # plus the one of the warm-up
    counter = redis.Redis.from_url(REDIS_URL)
    worker = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env())
    try:
        first = None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            done = int(counter.get(DONE_KEY) or 0)
            if done and first is None:
                first = (time.perf_counter(), done)
            if done >= tasks:
                assert first is not None
                return {"rate": (done - first[1]) / (time.perf_counter() - first[0])}
            time.sleep(POLL)
        raise SystemExit(f"{system.name} drained {done} of {tasks} in {DRAIN_TIMEOUT}s")
    finally:
        stop(worker)


def latency(system: System, calls: int) -> dict[str, float]:
    worker = subprocess.Popen([sys.executable, *WORKERS[system.name]], cwd=REPO, env=env())
    try:
        system.get(system.enqueue())  # the worker is up
        for _ in range(20):
            system.get(system.enqueue())
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            system.get(system.enqueue())
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return {"p50": statistics.median(times), "p99": times[int(len(times) * 0.99) - 1]}
    finally:
        stop(worker)


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


# -- the driver ----------------------------------------------------------------------


def run(system: str, workload: str, tasks: int, calls: int) -> dict[str, float]:
    fresh()
    command = [sys.executable, __file__, "--measure", system, workload, str(tasks), str(calls)]
    done = subprocess.run(
        command, cwd=REPO, env=env(system), capture_output=True, text=True, timeout=170, check=False
    )
    if done.returncode != 0:
        print(f"{system} {workload} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {}
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(results: dict[tuple[str, str], dict[str, float]], tasks: int, calls: int) -> str:
    rows = [
        ("enqueue, one by one (tasks/s)", "serial", "rate", True),
        (f"enqueue, batches of {BATCH} (tasks/s)", "batch", "rate", True),
        ("drain, one worker on 2 cores (tasks/s)", "drain", "rate", True),
        (f"drain, celeriac --prefetch {PREFETCH} (tasks/s)", "drain_prefetch", "rate", True),
        ("round trip p50 (ms)", "latency", "p50", False),
        ("round trip p99 (ms)", "latency", "p99", False),
    ]
    head = (
        "| metric | celeriac | celery | dramatiq | dramatiq, confirms | vs celery | vs dramatiq |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, workload, key, higher in rows:
        values = {s: results.get((s, workload), {}).get(key) for s in SYSTEMS}
        if workload == "drain_prefetch":  # the peers' column: their one drain setting
            values.update({s: results.get((s, "drain"), {}).get(key) for s in SYSTEMS[1:3]})
        cells = [
            f"{v:,.0f}" if higher and v else f"{v:.2f}" if v else "n/a" for v in values.values()
        ]
        ratios = []
        for peer in ("celery", "dramatiq"):
            ours, theirs = values["celeriac"], values[peer]
            if ours and theirs:
                ratios.append(f"{(ours / theirs if higher else theirs / ours):.2f}x")
            else:
                ratios.append("n/a")
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    lines.append(f"\n{tasks:,} tasks, {calls} round trips; ratios > 1 mean celeriac is better.")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        system, workload, tasks, calls = (
            sys.argv[2],
            sys.argv[3],
            int(sys.argv[4]),
            int(sys.argv[5]),
        )
        print(json.dumps(measure(system, workload, tasks, calls)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--only", nargs="*", choices=WORKLOADS, default=list(WORKLOADS))
    args = parser.parse_args()
    results: dict[tuple[str, str], dict[str, float]] = {}
    began = time.monotonic()
    try:
        for workload in args.only:
            for system in SYSTEMS:
                if not runs(system, workload):
                    continue
                results[(system, workload)] = run(system, workload, args.tasks, args.latency_calls)
                print(f"{workload:8} {system:9} {results[(system, workload)]}", flush=True)
    finally:
        rabbitmqctl("delete_vhost", VHOST)
    print()
    print(table(results, args.tasks, args.latency_calls))
    print(f"\n({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
