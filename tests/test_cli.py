"""The celeriac command: help, errors that say what to do, call/result/purge/status/dead-letters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import celeriac

ROOT = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/cli.db"
    return {
        "CELERIAC_BROKER_URL": url,
        "CELERIAC_RESULT_BACKEND": url,
        "RUN_LOG": str(tmp_path / "r"),
    }


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"celeriac, version {celeriac.__version__}"
    helped = run("--help").stdout
    for command in ("worker", "call", "result", "purge", "status", "dead-letters"):
        assert command in helped


def test_missing_module_says_how_to_fix() -> None:
    proc = run("-A", "no_such_project", "status")
    assert proc.returncode == 1
    assert "cannot import 'no_such_project'" in proc.stderr
    assert "PYTHONPATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_module_without_app() -> None:
    proc = run("-A", "tests.apps", "status")
    assert proc.returncode == 1
    assert "has no celeriac app" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_broker_url_is_one_line() -> None:
    proc = run("-A", "tests.apps.durable", "-b", "bogus://x", "status")
    assert proc.returncode == 1
    assert "unknown broker scheme 'bogus' in 'bogus://x'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_sqlite_path_names_the_url() -> None:
    proc = run("-A", "tests.apps.durable", "-b", "sqlite:////proc/nope/x.db", "status")
    assert proc.returncode == 1
    assert "sqlite:////proc/nope/x.db" in proc.stderr and "Traceback" not in proc.stderr


def test_no_app_given() -> None:
    proc = run("status")
    assert proc.returncode == 2 and "pass -A MODULE" in proc.stderr


def test_call_status_purge_result(sqlite_env: dict[str, str]) -> None:
    sent = run(
        "-A",
        "tests.apps.durable",
        "call",
        "tests.apps.durable.work",
        "--args",
        "[1, 0]",
        env=sqlite_env,
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert len(task_id) == 36
    status = run("-A", "tests.apps.durable", "status", env=sqlite_env)
    assert "queue celery: 1 ready, 0 delayed, 0 reserved" in status.stdout, (
        status.stdout + status.stderr
    )
    pending = run("-A", "tests.apps.durable", "result", task_id, env=sqlite_env)
    assert f"{task_id}: PENDING" in pending.stdout
    unknown = run("-A", "tests.apps.durable", "result", "nope", env=sqlite_env)
    assert "unknown" in unknown.stdout
    purged = run("-A", "tests.apps.durable", "purge", "-f", env=sqlite_env)
    assert "purged 1 message(s)" in purged.stdout
    bad = run("-A", "tests.apps.durable", "call", "x", "--args", "{", env=sqlite_env)
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_worker_runs_a_called_task_and_dead_letters_cli(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    from celeriac.testing import WorkerProcess

    env = {**sqlite_env, "CELERIAC_WORKER_SHUTDOWN_TIMEOUT": "5"}
    with WorkerProcess(
        "tests.apps.durable", "-P", "solo", cwd=ROOT, env=env, log=tmp_path / "w.log"
    ) as w:
        done = run(
            "-A",
            "tests.apps.durable",
            "call",
            "tests.apps.durable.work",
            "--args",
            "[5, 0]",
            "--wait",
            "20",
            env=env,
        )
        assert done.stdout.strip() == "5", done.stderr
        lost = run("-A", "tests.apps.durable", "call", "not.a.task", "--wait", "20", env=env)
        assert lost.returncode == 1 and "not registered" in lost.stderr
    assert "ready" in w.log()
    listed = run("-A", "tests.apps.durable", "dead-letters", "list", env=env)
    assert "not.a.task" in listed.stdout and "unknown task" in listed.stdout
    letter_id = listed.stdout.split()[0]
    shown = run("-A", "tests.apps.durable", "dead-letters", "show", letter_id, env=env)
    assert '"task": "not.a.task"' in shown.stdout
    requeued = run("-A", "tests.apps.durable", "dead-letters", "requeue", letter_id, env=env)
    assert "requeued 1" in requeued.stdout
    status = run("-A", "tests.apps.durable", "status", env=env)
    assert "1 ready" in status.stdout and "dead letters: 0" in status.stdout
    assert "deleted 0" in run("-A", "tests.apps.durable", "dead-letters", "purge", env=env).stdout


def test_the_cli_package_runs_as_a_module_too() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "celeriac.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.stdout.strip() == f"celeriac, version {celeriac.__version__}", proc.stderr


def test_the_banner_names_the_storage_and_the_middleware() -> None:
    from celeriac.brokers import broker_from_url
    from celeriac.cli.worker import banner
    from celeriac.testing import memory_app
    from celeriac.worker import choose_config
    from celeriac.worker.middleware import default_middleware

    app = memory_app()
    text = banner(
        app, choose_config(app, pool="solo"), broker_from_url(app.broker_url), default_middleware()
    )
    assert (
        "middleware:  RelayedDuplicates, Revoked, Expiry, WorkerLost, RateLimits, Retries" in text
    )
    assert "(storage" not in text  # memory:// names no shared storage
