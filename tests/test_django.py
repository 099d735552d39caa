"""Django: the example project's own tests, an outbox on Django's SQLite, and the typing.

``examples/django_project`` is a Celery-style Django project with only the import
changed; ``python manage.py test`` (Django's runner, its test database on the
test PostgreSQL) starts a real ``celeriac -A proj worker`` and proves that a
task sent in ``transaction.atomic()`` with ``app.transaction(connection)`` runs
if and only if the order commits, and that ``delay_on_commit`` sends only after
the commit. Django is configured only in subprocesses: a configured Django in
this process would change what ``autodiscover_tasks()`` finds for every other
test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.errors import ConfigurationError

from .services import POSTGRES_HOST, POSTGRES_PORT, POSTGRES_START, require_server

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "django_project"


def _env() -> dict[str, str]:
    """This environment without what would point Django or celeriac elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_NAME") and not k.startswith("CELERIAC_")
    }


def python(args: list[str], cwd: Path, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python args...`` in ``cwd`` with this environment (``_env``), its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_example_project_tests_pass() -> None:
    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT, POSTGRES_START)
    done = python(["manage.py", "test", "--noinput", "-v", "2"], PROJECT, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    results = [line for line in out.splitlines() if line.startswith("test_") and " ... " in line]
    assert len(results) == 6 and all(line.endswith(" ... ok") for line in results), out
    assert "Ran 6 tests" in out and "\nOK" in out, out


SQLITE_OUTBOX = """
import sqlite3, sys

import django
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}}
)
django.setup()

from django.db import connection, transaction

from celeriac import Celeriac
from celeriac.contrib.django import atomic, database_url
from celeriac.errors import ConfigurationError
from celeriac.transactions.outbox import ddl

app = Celeriac("shop", broker="memory://", outbox_url=database_url())


@app.task
def ship(order_id: int) -> None: ...


with connection.cursor() as cursor:  # the application's migration
    cursor.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    cursor.execute(ddl(app.conf.outbox_url))


def rows() -> int:
    with sqlite3.connect(sys.argv[1]) as other:
        return other.execute("SELECT count(*) FROM celeriac_outbox").fetchone()[0]


def order() -> int:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO orders DEFAULT VALUES")
        return cursor.lastrowid


class Refused(Exception):
    pass


with transaction.atomic():
    with app.transaction(connection):
        ship.delay(order())
print("committed", rows())
try:
    with transaction.atomic():
        with app.transaction(connection):
            ship.delay(order())
        raise Refused
except Refused:
    pass
print("rolled back", rows())
with atomic(app):
    ship.delay(order())
print("atomic", rows())
try:
    with atomic(app):
        ship.delay(order())
        raise Refused
except Refused:
    pass
print("atomic rolled back", rows())
try:
    with app.transaction(connection):
        ship.delay(order())
except ConfigurationError as exc:
    print("outside atomic:", exc)
print("outside atomic", rows())
"""


def test_outbox_on_djangos_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite3"
    done = python(["-c", SQLITE_OUTBOX, str(db)], tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["committed 1", "rolled back 1", "atomic 2", "atomic rolled back 2"], lines
    assert "must be inside transaction.atomic()" in lines[4], lines
    assert lines[5] == "outside atomic 2", lines


TYPED = textwrap.dedent(
    """
    from celeriac import Celeriac

    app = Celeriac("t", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay_on_commit(1, 2)
    add.apply_async_on_commit((1, 2), countdown=3, using="replica")
    add.delay_on_commit("x", 2)
    """
)


def test_delay_on_commit_is_typed_like_delay(tmp_path: Path) -> None:
    source = tmp_path / "typed_use.py"
    source.write_text(TYPED)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    proc = subprocess.run(
        [*mypy, "--cache-dir", str(tmp_path / "c"), str(source)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, proc.stdout
    assert 'typed_use.py:12: error: Argument 1 to "delay_on_commit"' in errors[0], errors
    assert 'incompatible type "str"; expected "int"' in errors[0], errors


def test_without_django_on_commit_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "django.db", None)  # what an uninstalled Django raises
    app = Celeriac("t", broker="memory://", set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="pip install django"):
        add.delay_on_commit(1, 2)
    app.close()
