"""The public API is typed: mypy rejects wrong arguments and infers result types."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SNIPPET = textwrap.dedent(
    """
    from celeriac import Celeriac

    app = Celeriac("t", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def bound(self: object, name: str) -> str:
        return name

    @app.task
    async def coro(n: int) -> float:
        return n / 2

    reveal_type(add.delay(1, 2))
    reveal_type(add.delay(1, 2).get())
    reveal_type(bound.delay("a"))
    reveal_type(coro.delay(1))
    add.delay("x", 2)
    bound.delay(3)
    """
)


def test_mypy_checks_task_calls(tmp_path: Path) -> None:
    source = tmp_path / "typed_use.py"
    source.write_text(SNIPPET)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "c"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    out = proc.stdout.replace("builtins.", "")  # mypy versions differ in qualifying builtins
    assert 'Revealed type is "celeriac.result.AsyncResult[int]"' in out, out
    assert 'Revealed type is "int"' in out, out
    assert 'Revealed type is "celeriac.result.AsyncResult[str]"' in out, out
    assert 'Revealed type is "celeriac.result.AsyncResult[float]"' in out, out
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in out, out
    assert out.count("incompatible type") == 2, out
