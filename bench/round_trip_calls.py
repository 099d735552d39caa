"""How many of celeriac's functions one ``delay()`` -> worker -> ``get()`` round trip enters.

    python bench/round_trip_calls.py [--broker sqlite|redis|both]

A measure of how many layers a task crosses, not of speed: every distinct
named function (a code object in ``src/celeriac``) entered during one warm
round trip is counted once, split by where it ran: the caller's thread while
``delay()`` runs (send), the caller's thread while ``get()`` runs (get), and
every other thread (the worker's loop and task threads, connection threads).
A warm-up round trip first keeps start-up (connecting, creating tables) out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SOURCE = str(REPO / "src" / "celeriac")


class Counter:
    """Distinct celeriac functions entered, by phase, while ``phase`` is set."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.caller = threading.get_ident()
        self.seen: dict[str, set[types.CodeType]] = {"send": set(), "worker": set(), "get": set()}

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if self.phase is None or event != "call":
            return
        code = frame.f_code
        if not code.co_filename.startswith(SOURCE) or code.co_name.startswith("<"):
            return
        where = self.phase if threading.get_ident() == self.caller else "worker"
        self.seen[where].add(code)


def measure(broker_url: str) -> dict[str, int]:
    counter = Counter()
    threading.setprofile(counter)  # threads started from here on
    sys.setprofile(counter)
    from celeriac import Celeriac
    from celeriac._sync import close_all
    from celeriac.testing import worker_thread

    app = Celeriac("calls", broker=broker_url, backend=broker_url, set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with worker_thread(app, concurrency=1):
            assert add.delay(1, 1).get(timeout=10) == 2  # warm-up
            counter.phase = "send"
            result = add.delay(2, 3)
            counter.phase = "get"
            assert result.get(timeout=10) == 5
            counter.phase = None
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
        app.close()
        close_all()
    counts = {phase: len(codes) for phase, codes in counter.seen.items()}
    counts["distinct"] = len(set().union(*counter.seen.values()))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=["sqlite", "redis", "both"], default="both")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/calls.db", "redis": "redis://127.0.0.1:6379/14"}
        wanted = ["sqlite", "redis"] if args.broker == "both" else [args.broker]
        print(f"{'broker':<8} {'send':>5} {'worker':>7} {'get':>5} {'distinct':>9}")
        for name in wanted:
            c = measure(urls[name])
            print(f"{name:<8} {c['send']:>5} {c['worker']:>7} {c['get']:>5} {c['distinct']:>9}")


if __name__ == "__main__":
    main()
