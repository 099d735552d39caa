"""celeriac's PostgreSQL broker against Procrastinate 3, same database, same run.

    python bench/postgres_vs_peers.py [--tasks N] [--latency-calls N] [--only WORKLOAD]
                                      [--rounds N] [--quick]

Every measurement runs in a fresh process on fresh schemas of one database
(``BENCH_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``):
the script drops ``bench_celeriac``, ``bench_procrastinate`` and ``bench_floor``
before and after each one, celeriac creates its tables on connect and
Procrastinate's schema is applied with its own ``apply_schema``. The systems
take turns, and the machine's floors (``INSERT`` statements from psycopg 3: see
``floor``) are measured first in the same run. See ``bench/README.md`` for the
workloads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.worker_process import Worker, round_trips  # noqa: E402

URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CELERIAC_SCHEMA, PROCRASTINATE_SCHEMA, FLOOR_SCHEMA = (
    "bench_celeriac",
    "bench_procrastinate",
    "bench_floor",
)
BATCH = 100
"""Tasks per application transaction (one ``delay()``/``defer()`` each) and per batch
call (celeriac ``send_many``, Procrastinate ``batch_defer``)."""
CLIENT_WORK = 50e-6
"""Seconds of client CPU work before each statement of the ``*_busy`` floors: less
than either system spends in Python per enqueue."""
POLL = 0.02
"""Seconds between two looks at a system's table while its worker drains."""
STATUS_POLL = 0.0005
"""Seconds between two reads of a Procrastinate job's status in the round trip."""
RUN_TIMEOUT = 300.0
DRAIN_TIMEOUT = 200.0
SYSTEMS = ("celeriac", "procrastinate")
WORKLOADS = ("serial", "txn", "batch", "drain", "latency")
WORKERS: dict[str, list[str]] = {  # after ``python``; BENCH_<SYSTEM>_WORKER adds options
    "celeriac": ["-m", "celeriac", "-A", "bench.apps.celeriac_postgres", "worker", "-l", "WARNING"],
    "procrastinate": [
        "-m",
        "procrastinate",
        "--app=bench.apps.procrastinate_app.app",
        "worker",
        "--concurrency",
        "2",
    ],
}
for _name, _command in WORKERS.items():
    _command.extend(os.environ.get(f"BENCH_{_name.upper()}_WORKER", "").split())
REMAINING = {  # system -> SQL: (tasks not done yet, tasks no worker has taken yet)
    "celeriac": "SELECT count(*), count(*) FILTER (WHERE delivery_count = 0)"
    f" FROM {CELERIAC_SCHEMA}.celeriac_messages",
    "procrastinate": "SELECT count(*) FILTER (WHERE status IN ('todo', 'doing')),"
    f" count(*) FILTER (WHERE status = 'todo') FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs",
}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_CELERIAC_PG_URL": f"{URL}?schema={CELERIAC_SCHEMA}",
        "BENCH_PROCRASTINATE_PG_URL": URL,
        "BENCH_PROCRASTINATE_SCHEMA": PROCRASTINATE_SCHEMA,
    }


# -- one measurement, in its own process ----------------------------------------------


class Queue:
    """What a workload needs from a task queue: enqueue, batch, round trip."""

    name = ""

    def enqueue(self) -> None:
        raise NotImplementedError

    def batch(self, n: int) -> None:
        raise NotImplementedError

    def txn(self, n: int) -> None:
        """``n`` tasks sent one call each inside ONE transaction of the application's
        own psycopg connection, committed at the end."""
        raise NotImplementedError

    def round_trip(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CeleriacQueue(Queue):
    name = "celeriac"

    def __init__(self) -> None:
        from bench.apps import celeriac_postgres

        self.app, self.noop = celeriac_postgres.app, celeriac_postgres.noop
        self.conn: psycopg.Connection[Any] | None = None

    def enqueue(self) -> None:
        self.noop.delay()

    def batch(self, n: int) -> None:
        self.app.send_many([self.noop.s() for _ in range(n)])

    def txn(self, n: int) -> None:
        if self.conn is None:  # the application's connection (celeriac names its schema)
            self.conn = psycopg.connect(URL, autocommit=True)
        with self.conn.transaction(), self.app.transaction(self.conn):
            for _ in range(n):
                self.noop.delay()

    def round_trip(self) -> None:
        assert self.noop.delay().get(timeout=60) == 1

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class ProcrastinateQueue(Queue):
    """Opens the app (sync API) and applies Procrastinate's schema, untimed.

    Procrastinate keeps no result to wait on: a round trip defers, then reads the
    job's status every ``STATUS_POLL`` seconds until ``succeeded``. In the
    application's transaction each job is deferred as its docs say
    (docs/howto/production/external_connection.md):
    ``noop.configure(connection=conn).defer()``, on a connection whose
    ``search_path`` is Procrastinate's schema, as its own pool's are.
    """

    name = "procrastinate"

    def __init__(self) -> None:
        from bench.apps import procrastinate_app

        self.app, self.noop = procrastinate_app.app, procrastinate_app.noop
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.status: psycopg.Connection[Any] | None = None
        self.conn: psycopg.Connection[Any] | None = None

    def enqueue(self) -> None:
        self.noop.defer()

    def batch(self, n: int) -> None:
        self.noop.batch_defer(*({} for _ in range(n)))

    def txn(self, n: int) -> None:
        if self.conn is None:
            self.conn = psycopg.connect(
                URL, autocommit=True, options=f"-c search_path={PROCRASTINATE_SCHEMA}"
            )
        with self.conn.transaction():
            for _ in range(n):
                self.noop.configure(connection=self.conn).defer()

    def round_trip(self) -> None:
        if self.status is None:
            self.status = psycopg.connect(URL, autocommit=True)
        job_id = self.noop.defer()
        deadline = time.perf_counter() + 60
        while True:
            row = self.status.execute(
                f"SELECT status FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs WHERE id = %s",
                (job_id,),
            ).fetchone()
            if row is not None and row[0] == "succeeded":
                return
            if time.perf_counter() > deadline:
                raise TimeoutError(f"job {job_id} still {row} after 60 s")
            time.sleep(STATUS_POLL)

    def close(self) -> None:
        for conn in (self.status, self.conn):
            if conn is not None:
                conn.close()
        self.app.close()


QUEUES: dict[str, type[Queue]] = {"celeriac": CeleriacQueue, "procrastinate": ProcrastinateQueue}


def floor(n: int) -> dict[str, float]:
    """The machine's floors, from psycopg 3's sync connection, rows per second:

    * ``rate`` (``1/F_pg``): one ``INSERT`` + ``COMMIT`` per row, a round trip and a
      WAL flush each (the one-by-one row's floor);
    * ``txn``: ``BATCH`` single-row ``INSERT`` statements, then one ``COMMIT``: a round
      trip per row, a flush per ``BATCH`` (the application-transaction row's floor);
    * ``batch``: one ``INSERT`` of ``BATCH`` rows + ``COMMIT`` (the batch API's floor);
    * ``rate_busy``, ``txn_busy``: ``rate`` and ``txn`` with ``CLIENT_WORK`` of CPU work
      in the client before each statement, not counted. Back to back, both processes
      stay awake; a client that does anything between two statements (building a
      message) finds the server asleep, and on some machines (virtual ones) waking it
      costs more than the statement: this is the floor of any library's enqueue.
    """
    with psycopg.connect(URL) as conn:
        conn.execute(f"CREATE SCHEMA {FLOOR_SCHEMA}")
        conn.execute(f"CREATE TABLE {FLOOR_SCHEMA}.rows (id bigserial PRIMARY KEY, x int)")
        conn.commit()
        insert = f"INSERT INTO {FLOOR_SCHEMA}.rows (x) VALUES (1)"
        insert_many = (
            f"INSERT INTO {FLOOR_SCHEMA}.rows (x) SELECT 1 FROM generate_series(1, {BATCH})"
        )
        conn.execute(insert)  # warm-up; not timed
        conn.commit()

        def timed(statement: str, per_commit: int, rows: int, work: float = 0.0) -> float:
            spent = 0.0
            for _ in range(0, n, rows * per_commit):
                for i in range(per_commit):
                    if work:
                        _spin(work)
                    started = time.perf_counter()
                    conn.execute(statement)
                    if i == per_commit - 1:
                        conn.commit()
                    spent += time.perf_counter() - started
            return n / spent

        return {
            "rate": timed(insert, 1, 1),
            "txn": timed(insert, BATCH, 1),
            "batch": timed(insert_many, 1, BATCH),
            "rate_busy": timed(insert, 1, 1, CLIENT_WORK),
            "txn_busy": timed(insert, BATCH, 1, CLIENT_WORK),
        }


def _spin(seconds: float) -> None:
    """Keep this CPU busy (a sleep would let it idle too)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def serial(q: Queue, n: int) -> dict[str, float]:
    q.enqueue()  # connects; not timed
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


def txn(q: Queue, n: int) -> dict[str, float]:
    q.txn(1)  # connects (both connections); not timed
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        q.txn(min(BATCH, n - start))
    return {"rate": n / (time.perf_counter() - started)}


def drain(q: Queue, n: int) -> dict[str, float]:
    """From the first look that finds a task taken to the one that finds none left.

    Both systems' tables are read with the same kind of query every ``POLL``
    seconds, so process start-up stays out of the figure for both.
    """
    for start in range(0, n, BATCH):
        q.batch(min(BATCH, n - start))
    worker = Worker(q.name, WORKERS[q.name], REPO, _env())
    try:
        with psycopg.connect(URL, autocommit=True) as conn:
            launched = time.perf_counter()
            first_at, first_left = 0.0, 0
            while True:
                time.sleep(POLL)
                row = conn.execute(REMAINING[q.name]).fetchone()
                assert row is not None
                left, untouched = row
                now = time.perf_counter()
                if untouched < n and not first_at:
                    first_at, first_left = now, left
                if left == 0:
                    break
                if now - launched > DRAIN_TIMEOUT:
                    raise RuntimeError(f"drain stuck at {left} left:\n{worker.tail()}")
                worker.check()
    finally:
        worker.stop()
    return {"rate": first_left / max(now - first_at, POLL), "startup": first_at - launched}


def latency(q: Queue, calls: int) -> dict[str, float]:
    return round_trips(Worker(q.name, WORKERS[q.name], REPO, _env()), q.round_trip, calls)


def measure(system: str, workload: str, n: int, calls: int) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    if workload == "floor":
        return floor(n)
    q = QUEUES[system]()
    try:
        if workload == "serial":
            return serial(q, n)
        if workload == "batch":
            return batch(q, n)
        if workload == "txn":
            return txn(q, n)
        if workload == "drain":
            return drain(q, n)
        return latency(q, calls)
    finally:
        q.close()


# -- the whole run ---------------------------------------------------------------------


def _drop_schemas(*, recreate: bool) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        for schema in (CELERIAC_SCHEMA, PROCRASTINATE_SCHEMA, FLOOR_SCHEMA):
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if recreate:  # celeriac creates its own; apply_schema needs it to exist
            conn.execute(f"CREATE SCHEMA {PROCRASTINATE_SCHEMA}")


def run_one(system: str, workload: str, n: int, calls: int) -> dict[str, float] | str:
    """One measurement in a fresh process on fresh schemas; a string says why not."""
    _drop_schemas(recreate=True)
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
        _drop_schemas(recreate=False)
    if done.returncode != 0:
        return f"failed (exit {done.returncode}; see stderr above)"
    result: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def preflight() -> None:
    """Fail now, with the fix, if PostgreSQL is down or Procrastinate is not installed."""
    if importlib.util.find_spec("procrastinate") is None:
        sys.exit("postgres_vs_peers: Procrastinate is missing: pip install 'procrastinate>=3'")
    try:
        psycopg.connect(URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        sys.exit(f"postgres_vs_peers: cannot reach PostgreSQL at {URL} ({exc})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per workload")
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--only", choices=WORKLOADS, action="append", help="run these only")
    parser.add_argument(
        "--quick", action="store_true", help="1,000 tasks and 100 round trips (under 2 minutes)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure everything this many times, floors included, the systems taking turns"
        " at going first; the table shows medians",
    )
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.latency_calls = 1000, 100
    if args.one:
        system, workload = args.one
        print(json.dumps(measure(system, workload, args.tasks, args.latency_calls)), flush=True)
        return

    preflight()
    print(
        f"{os.cpu_count()} cores, {args.tasks} tasks per workload, "
        f"{args.latency_calls} round trips, {args.rounds} round(s), PostgreSQL {URL}",
        flush=True,
    )
    started = time.perf_counter()
    rounds: list[dict[tuple[str, str], dict[str, float] | str]] = []
    for n in range(args.rounds):
        results: dict[tuple[str, str], dict[str, float] | str] = {}
        results["floor", "floor"] = run_one("floor", "floor", args.tasks, args.latency_calls)
        print(f"  round {n + 1} floor: {results['floor', 'floor']}", file=sys.stderr, flush=True)
        for workload in args.only or WORKLOADS:
            for system in SYSTEMS if n % 2 == 0 else SYSTEMS[::-1]:
                outcome = run_one(system, workload, args.tasks, args.latency_calls)
                results[system, workload] = outcome
                print(
                    f"  round {n + 1} {workload} {system}: {outcome}", file=sys.stderr, flush=True
                )
        rounds.append(results)
    _report(_medians(rounds))
    if len(rounds) > 1:
        _spread(rounds)
    print(f"\n(total {time.perf_counter() - started:.0f}s)")


def _medians(
    rounds: list[dict[tuple[str, str], dict[str, float] | str]],
) -> dict[tuple[str, str], dict[str, float] | str]:
    """Each measurement's median over the rounds; a measurement that failed in any round
    shows that round's error."""
    merged: dict[tuple[str, str], dict[str, float] | str] = {}
    for key in rounds[0]:
        outcomes = [r[key] for r in rounds if key in r]
        failed = [o for o in outcomes if isinstance(o, str)]
        if failed:
            merged[key] = failed[0]
            continue
        fields = {f for o in outcomes if isinstance(o, dict) for f in o}
        merged[key] = {
            f: statistics.median(o[f] for o in outcomes if isinstance(o, dict)) for f in fields
        }
    return merged


def _spread(rounds: list[dict[tuple[str, str], dict[str, float] | str]]) -> None:
    """celeriac/procrastinate in each round, to show how far one round can be trusted."""
    print("\nceleriac/procrastinate in each round:")
    for key, label, higher_better in ROWS:
        ratios = []
        for results in rounds:
            ours, theirs = (_value(results, s, key) for s in SYSTEMS)
            if _ok(ours, theirs):
                ratios.append(ours / theirs if higher_better else theirs / ours)
        if ratios:
            print(f"  {label}: " + ", ".join(f"{r:.2f}x" for r in ratios))


ROWS = (  # workload/field, label, higher is better
    ("serial/rate", "enqueue, 1 thread, one by one (tasks/s)", True),
    ("txn/rate", f"enqueue, {BATCH} per app transaction (tasks/s)", True),
    ("batch/rate", f"enqueue, send_many/batch_defer of {BATCH} (tasks/s)", True),
    ("drain/rate", "drain, one worker on 2 cores (tasks/s)", True),
    ("latency/p50", "round trip p50, idle worker (ms)", False),
    ("latency/p99", "round trip p99, idle worker (ms)", False),
)
TARGETS = {
    "serial/rate": 2.0,
    "txn/rate": 2.0,
    "batch/rate": 2.0,
    "drain/rate": 2.0,
    "latency/p50": 2.0,
}
"""The issue's targets as a ratio (>1: celeriac better): 2x every rate, half the p50."""


def _value(results: dict[tuple[str, str], dict[str, float] | str], system: str, key: str) -> Any:
    workload, _, field = key.partition("/")
    got = results.get((system, workload))
    return got[field] if isinstance(got, dict) else got


FLOORS = {  # rate row -> its floor (a key of ``floor()``'s result), and how it is printed
    "serial/rate": ("rate_busy", "F_pg'"),
    "txn/rate": ("txn_busy", "F_txn'"),
    "batch/rate": ("batch", "F_batch"),
    "drain/rate": ("rate", "F_pg"),
}
_WORK = f"after {CLIENT_WORK * 1e6:.0f} us of client work each"
FLOOR_LINES = (
    ("rate", "F_pg", "one INSERT + COMMIT per row, back to back"),
    ("rate_busy", "F_pg'", f"the same, {_WORK}"),
    ("txn", "F_txn", f"{BATCH} one-row INSERTs, then COMMIT, back to back"),
    ("txn_busy", "F_txn'", f"the same, {_WORK}"),
    ("batch", "F_batch", f"one INSERT of {BATCH} rows + COMMIT"),
)


def _report(results: dict[tuple[str, str], dict[str, float] | str]) -> None:
    floors = results.get(("floor", "floor"))
    floors = floors if isinstance(floors, dict) else {}
    print()
    for key, name, what in FLOOR_LINES:
        if key in floors:
            print(
                f"floor {name}: {what} (psycopg 3 sync): {1e6 / floors[key]:.0f} us per row"
                f" -> 1/{name} = {floors[key]:,.0f} rows/s"
            )
    header = ["metric", *SYSTEMS, "floor", "celeriac / floor", "procrastinate / floor"]
    header += ["celeriac/procrastinate", "target", "met"]
    rows: list[list[str]] = []
    for key, label, higher_better in ROWS:
        if not any((s, key.partition("/")[0]) in results for s in SYSTEMS):
            continue
        values = [_value(results, s, key) for s in SYSTEMS]
        cells = [label, *(_cell(v) for v in values)]
        floor_key, floor_name = FLOORS.get(key, ("", ""))
        floor_rate = floors.get(floor_key)
        if floor_rate:
            cells.append(f"1/{floor_name}")
            cells += [f"{v / floor_rate:.2f}" if _ok(v) else "" for v in values]
        else:
            cells += ["", "", ""]
        ours, theirs = values
        ratio = (ours / theirs if higher_better else theirs / ours) if _ok(ours, theirs) else None
        cells.append("n/a" if ratio is None else f"{ratio:.2f}x")
        target = TARGETS.get(key)
        cells.append("" if target is None else f">= {target:.0f}x")
        cells.append("" if target is None or ratio is None else "yes" if ratio >= target else "NO")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    print(
        "\nRatios > 1 mean celeriac is better (round trips: procrastinate / celeriac)."
        f"\nApplication transaction: `with conn.transaction(), app.transaction(conn):` {BATCH}"
        f" x noop.delay() against `with conn.transaction():` {BATCH} x"
        " noop.configure(connection=conn).defer(), each on its own psycopg connection."
        f"\nsend_many/batch_defer: celeriac's batch API (app.send_many, {BATCH} messages in"
        f" one transaction) against Procrastinate's task.batch_defer of {BATCH} (one INSERT)."
        "\nProcrastinate has no result wait: its round trip is defer(), then reading the"
        f" job's status every {STATUS_POLL * 1000:g} ms until 'succeeded'."
    )


def _ok(*values: Any) -> bool:
    return all(isinstance(v, float) and v > 0 for v in values)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return "n/a" if value is None else "error"


if __name__ == "__main__":
    main()
