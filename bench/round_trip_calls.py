"""How many of celeriac's functions one ``delay()`` -> worker -> ``get()`` round trip enters.

    python bench/round_trip_calls.py [--broker sqlite|redis|both] [--peers]

A measure of how many layers a task crosses, not of speed: every distinct
named function (a code object in ``src/celeriac``) entered during one warm
round trip is counted once, split by where it ran: the caller's thread while
``delay()`` runs (send), the caller's thread while ``get()`` runs (get), and
every other thread (the worker's loop and task threads, connection threads).
A warm-up round trip first keeps start-up (connecting, creating tables) out.

``--peers`` counts the same round trip in Huey (SQLite), Dramatiq (Redis,
with its Results middleware) and Celery (Redis broker and result store,
counting both ``celery`` and ``kombu``), each with a worker thread in the
process and only the library's own functions counted, as for celeriac.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SOURCE = str(REPO / "src" / "celeriac")


class Counter:
    """Distinct functions of the ``sources`` folders entered, by phase, while ``phase`` is set."""

    def __init__(self, *sources: str) -> None:
        self.sources = sources or (SOURCE,)
        self.phase: str | None = None
        self.caller = threading.get_ident()
        self.seen: dict[str, set[types.CodeType]] = {"send": set(), "worker": set(), "get": set()}

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if self.phase is None or event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(self.sources) or code.co_name.startswith("<"):
            return
        where = self.phase if threading.get_ident() == self.caller else "worker"
        self.seen[where].add(code)


@contextmanager
def counting(counter: Counter) -> Iterator[Counter]:
    threading.setprofile(counter)  # threads started from here on
    sys.setprofile(counter)
    try:
        yield counter
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


def _add(x: int, y: int) -> int:
    return x + y


def round_trip(
    counter: Counter, send: Callable[[int, int], Any], get: Callable[[Any], Any]
) -> None:
    """A warm-up round trip, then one counted by phase."""
    assert get(send(1, 1)) == 2
    counter.phase = "send"
    handle = send(2, 3)
    counter.phase = "get"
    assert get(handle) == 5
    counter.phase = None


def counts(counter: Counter) -> dict[str, int]:
    found = {phase: len(codes) for phase, codes in counter.seen.items()}
    found["distinct"] = len(set().union(*counter.seen.values()))
    return found


def celeriac(broker_url: str) -> dict[str, int]:
    with counting(Counter()) as counter:
        from celeriac import Celeriac
        from celeriac._sync import close_all
        from celeriac.testing import worker_thread

        app = Celeriac("calls", broker=broker_url, backend=broker_url, set_as_current=False)

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        try:
            with worker_thread(app, concurrency=1):
                round_trip(counter, add.delay, lambda r: r.get(timeout=10))
        finally:
            app.close()
            close_all()
    return counts(counter)


def huey(tmp: str) -> dict[str, int]:
    import huey as package
    from huey import SqliteHuey

    with counting(Counter(str(Path(package.__file__).parent))) as counter:
        queue = SqliteHuey(filename=f"{tmp}/huey.db")
        add = queue.task()(_add)
        consumer = queue.create_consumer(workers=1, worker_type="thread", periodic=False)
        consumer.start()
        try:
            round_trip(counter, add, lambda r: r.get(blocking=True, timeout=10))
        finally:
            consumer.stop(graceful=True)
    return counts(counter)


def dramatiq(redis_url: str) -> dict[str, int]:
    import dramatiq as package
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    with counting(Counter(str(Path(package.__file__).parent))) as counter:
        broker = RedisBroker(url=redis_url)  # type: ignore[no-untyped-call]
        broker.flush_all()
        broker.add_middleware(Results(backend=RedisBackend(url=redis_url)))  # type: ignore[no-untyped-call]
        package.set_broker(broker)  # Message.get_result finds the store through it
        add = package.actor(store_results=True, broker=broker)(_add)
        worker = package.Worker(broker, worker_threads=1)
        worker.start()
        try:
            round_trip(counter, add.send, lambda m: m.get_result(block=True, timeout=10_000))
        finally:
            worker.stop()
    return counts(counter)


def celery(redis_url: str) -> dict[str, int]:
    import celery as package
    import kombu
    from celery.contrib.testing.worker import start_worker

    sources = (str(Path(package.__file__).parent), str(Path(kombu.__file__).parent))
    with counting(Counter(*sources)) as counter:
        app = package.Celery("calls", broker=redis_url, backend=redis_url)
        add = app.task(name="add")(_add)
        with start_worker(app, pool="solo", perform_ping_check=False):
            round_trip(counter, add.delay, lambda r: r.get(timeout=10))
    return counts(counter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--peers", action="store_true", help="count Huey, Dramatiq, Celery too")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    redis = "redis://127.0.0.1:6379/14"
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, Callable[[], dict[str, int]]]] = []
        if args.broker in ("sqlite", "both"):
            runs.append(("celeriac sqlite", lambda: celeriac(f"sqlite:///{tmp}/calls.db")))
            if args.peers:
                runs.append(("huey sqlite", lambda: huey(tmp)))
        if args.broker in ("redis", "both"):
            runs.append(("celeriac redis", lambda: celeriac(redis)))
            if args.peers:
                runs.append(("dramatiq redis", lambda: dramatiq(redis)))
                runs.append(("celery redis", lambda: celery(redis)))
        print(f"{'system':<16} {'send':>5} {'worker':>7} {'get':>5} {'sum':>5} {'distinct':>9}")
        for name, run in runs:
            c = run()
            total = c["send"] + c["worker"] + c["get"]
            print(
                f"{name:<16} {c['send']:>5} {c['worker']:>7} {c['get']:>5} {total:>5}"
                f" {c['distinct']:>9}"
            )


if __name__ == "__main__":
    main()
