"""The quickstart: tasks on the embedded SQLite broker, no server needed.

Start a worker:      celeriac -A examples.quickstart worker
Send tasks:          python -m examples.quickstart
(or both at once:    python -m examples.quickstart --with-worker)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from celeriac import Celeriac, Task

app = Celeriac("quickstart")  # no URL: broker and results in ./celeriac.db


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=3, retry_backoff=True)
def flaky(self: Task[[int], str], attempts_needed: int) -> str:
    if self.request.retries < attempts_needed:
        raise self.retry(countdown=0.1)
    return f"succeeded after {self.request.retries} retries"


@app.task
async def slow_hello(name: str) -> str:
    await asyncio.sleep(0.1)
    return f"hello, {name}"


def main() -> None:
    worker = None
    if "--with-worker" in sys.argv:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac.cli",
                "-A",
                "examples.quickstart",
                "worker",
                "-l",
                "WARNING",
            ]
        )
    try:
        started = time.perf_counter()
        print("add(2, 2) =", add.delay(2, 2).get(timeout=30))
        results = [add.delay(i, i) for i in range(100)]
        print("100 adds  =", sum(r.get(timeout=30) for r in results))
        print("flaky     =", flaky.delay(2).get(timeout=30))
        print("async     =", slow_hello.delay("world").get(timeout=30))
        print(f"done in {time.perf_counter() - started:.2f}s")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)


if __name__ == "__main__":
    main()
