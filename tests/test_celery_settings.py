"""A real Celery configuration loads: every name in Celery 5.7's settings table is a
celeriac setting or accepted with one warning that says what celeriac does instead.

The names come from the installed Celery (``celery.app.defaults.NAMESPACES``),
so a Celery upgrade that adds a setting fails here until it is placed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.app.defaults import NAMESPACES, flatten

from celeriac import Celeriac
from celeriac.celery_settings import UNUSED
from celeriac.errors import UnknownSettingError
from celeriac.settings import SETTING_NAMES, Settings
from celeriac.testing import WorkerProcess

from .worker_processes import ROOT, client_app, wait_for, worker_env

CELERY_DEFAULTS: dict[str, object] = {name: option.default for name, option in flatten(NAMESPACES)}
WARNING = re.compile(r"setting '(\w+)' is accepted for Celery compatibility and not used: \S")


def celery_defaults_class() -> type:
    """A ``config_from_object`` class with every Celery 5.7 setting at Celery's default."""
    return type("CeleryDefaults", (), dict(CELERY_DEFAULTS))


def test_every_celery_setting_is_used_or_listed_as_unused() -> None:
    assert len(CELERY_DEFAULTS) > 200
    placed = SETTING_NAMES | UNUSED.keys()
    assert sorted(set(CELERY_DEFAULTS) - placed) == []
    assert not SETTING_NAMES & UNUSED.keys()
    assert sorted(UNUSED.keys() - CELERY_DEFAULTS.keys()) == []  # only Celery's own names


def test_celery_defaults_load_and_keep_celeriac_meanings() -> None:
    conf = Settings()
    conf.config_from_object(celery_defaults_class())
    assert conf.worker_pool == "process"  # Celery's "prefork"
    assert conf.result_expires == 86400.0  # Celery's timedelta(days=1)
    assert conf.task_routes is None and conf.task_annotations == {}  # None: not set
    assert conf.task_reject_on_worker_lost is True  # None: celeriac's default
    assert conf["broker_heartbeat"] == 120  # kept, for code that reads it
    assert conf.get("broker_pool_limit") == 10 and "broker_pool_limit" in conf


def test_unused_settings_warn_once_at_a_clients_first_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Celeriac("client", broker="memory://celery-settings", set_as_current=False)
    app.config_from_object(celery_defaults_class())
    app.conf.update(broker_url="memory://celery-settings", result_backend="memory://")
    with caplog.at_level(logging.WARNING, logger="celeriac"):
        app.send_task("anything")
        app.send_task("anything")
    warned = Counter(m[1] for r in caplog.records if (m := WARNING.search(r.getMessage())))
    assert warned == Counter(dict.fromkeys(UNUSED, 1))
    app.close()


def test_misspelled_celery_name_still_names_the_nearest() -> None:
    with pytest.raises(
        UnknownSettingError, match="did you mean 'broker_connection_retry_on_startup'"
    ):
        Settings().update(broker_connection_retry_on_start=True)


def test_old_uppercase_names_say_how_to_rename_them() -> None:
    with pytest.raises(UnknownSettingError, match="celery upgrade settings"):
        Settings().update(CELERY_ALWAYS_EAGER=True)


APP_MODULE = '''
"""Celery 5.7's whole settings table at its defaults, then the test's broker."""
import os

from celery.app.defaults import NAMESPACES, flatten

from celeriac import Celeriac

CeleryDefaults = type("CeleryDefaults", (), {n: o.default for n, o in flatten(NAMESPACES)})

app = Celeriac("allsettings")
app.config_from_object(CeleryDefaults)
app.conf.update(
    broker_url=os.environ["CELERIAC_BROKER_URL"],
    result_backend=os.environ["CELERIAC_RESULT_BACKEND"],
)
app.autodiscover_tasks(["tests.apps.autodiscover_pkg", "tests.apps.autodiscover_empty"])
'''


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[WorkerProcess, dict[str, str]]]:
    (tmp_path / "allsettings.py").write_text(APP_MODULE)
    url = f"sqlite:///{tmp_path}/broker.db"
    env = {**worker_env(url, url, tmp_path), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = WorkerProcess(
        "allsettings", "-c", "1", cwd=ROOT, env=env, log=tmp_path / "worker.log"
    ).start()
    try:
        yield proc, env
    finally:
        proc.stop()


@pytest.mark.slow
def test_a_worker_starts_with_every_celery_setting_at_its_default(
    worker: tuple[WorkerProcess, dict[str, str]],
) -> None:
    proc, env = worker
    client = client_app(env)
    try:
        result = client.send_task("tests.apps.autodiscover_pkg.tasks.double", (21,))
        assert result.get(timeout=20) == 42  # found by autodiscover_tasks at worker start
    finally:
        client.close()
    log = proc.log()
    warned = Counter(m.group(1) for m in WARNING.finditer(log))
    assert warned == Counter(dict.fromkeys(UNUSED, 1)), log
    assert "Traceback" not in log


def test_autodiscover_tasks_imports_each_packages_tasks_when_the_worker_starts() -> None:
    sys.modules.pop("tests.apps.autodiscover_pkg.tasks", None)
    app = Celeriac("discover", broker="memory://discover")  # shared_task: the current app
    packages = ["tests.apps.autodiscover_pkg", "tests.apps.autodiscover_empty"]
    app.autodiscover_tasks(lambda: packages)  # Django: lambda: settings.INSTALLED_APPS
    assert "tests.apps.autodiscover_pkg.tasks" not in sys.modules  # lazy
    app.import_modules()  # what `celeriac worker` does first
    assert "tests.apps.autodiscover_pkg.tasks.double" in app.tasks
    assert app.tasks["tests.apps.autodiscover_pkg.tasks.double"](4) == 8


def test_autodiscover_tasks_force_and_broken_modules() -> None:
    app = Celeriac("discover", broker="memory://discover", set_as_current=False)
    app.autodiscover_tasks(["tests.apps.autodiscover_pkg"], force=True)
    assert "tests.apps.autodiscover_pkg.tasks.double" in app.tasks
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        app.autodiscover_tasks(["no_such_package"], force=True)


HIJACK_MODULE = '''
"""An app that configures logging itself and keeps it (worker_hijack_root_logger=False)."""
import logging
import os

from celeriac import Celeriac

logging.basicConfig(filename=os.environ["APP_LOG"], format="APP %(message)s", level=logging.INFO)
app = Celeriac("keeplogging", worker_hijack_root_logger=False)
'''


@pytest.mark.slow
def test_worker_keeps_the_apps_logging_without_hijack_root_logger(tmp_path: Path) -> None:
    (tmp_path / "keeplogging.py").write_text(HIJACK_MODULE)
    url = f"sqlite:///{tmp_path}/broker.db"
    app_log = tmp_path / "app.log"
    env = {
        **worker_env(url, url, tmp_path),
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "APP_LOG": str(app_log),
    }
    proc = WorkerProcess("keeplogging", "-P", "solo", cwd=ROOT, env=env).start()
    try:
        wait_for(lambda: app_log.exists() and " ready" in app_log.read_text(), 20, "ready")
    finally:
        proc.stop()
    assert all(line.startswith("APP ") for line in app_log.read_text().splitlines())


def test_the_configuration_docs_name_every_celery_setting() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert sorted(name for name in CELERY_DEFAULTS if f"`{name}`" not in docs) == []
