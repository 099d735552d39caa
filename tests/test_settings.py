"""Settings: Celery's names, validation, environment, config objects."""

from __future__ import annotations

import types

import pytest

from celeriac import Celeriac
from celeriac.errors import ConfigurationError, UnknownSettingError
from celeriac.settings import Settings


def test_misspelled_setting_names_the_nearest() -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'task_acks_late'"):
        Celeriac("x", broker="memory://", task_ack_late=True)


def test_uppercase_celery_name_points_to_lowercase() -> None:
    with pytest.raises(UnknownSettingError, match="'broker_url'"):
        Settings().update({"BROKER_URL": "memory://"})


def test_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="worker_concurrency"):
        Settings().update(worker_concurrency="many")
    with pytest.raises(ConfigurationError, match="worker_pool"):
        Settings().update(worker_pool="gevent")


def test_safe_defaults() -> None:
    conf = Settings()
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_reject_on_worker_lost is True


def test_environment_variables() -> None:
    conf = Settings()
    conf.load_environment(
        {
            "CELERIAC_BROKER_URL": "redis://h/0",
            "CELERIAC_ACCEPT_CONTENT": "json,msgpack",
            "CELERIAC_TASK_ACKS_LATE": "false",
            "CELERIAC_TASK_ROUTES": '{"a.*": "q"}',
            "CELERIAC_WORKER_CONCURRENCY": "3",
            "OTHER": "ignored",
        }
    )
    assert conf.broker_url == "redis://h/0"
    assert conf.accept_content == ["json", "msgpack"]
    assert conf.task_acks_late is False
    assert conf.task_routes == {"a.*": "q"}
    assert conf.worker_concurrency == 3
    with pytest.raises(UnknownSettingError, match="CELERIAC_BROKER_ULR"):
        conf.load_environment({"CELERIAC_BROKER_ULR": "x"})


def test_environment_applies_to_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://from-env")
    assert Celeriac("x", set_as_current=False).broker_url == "memory://from-env"
    assert Celeriac("x", broker="memory://arg", set_as_current=False).broker_url == "memory://arg"


def test_config_from_object_and_django_namespace() -> None:
    module = types.ModuleType("celeryconfig")
    module.broker_url = "memory://cfg"  # type: ignore[attr-defined]
    module.task_default_queue = "jobs"  # type: ignore[attr-defined]
    module.types = types  # type: ignore[attr-defined]  # imported modules are skipped
    app = Celeriac("x", set_as_current=False)
    app.config_from_object(module)
    assert app.conf.task_default_queue == "jobs"
    django = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://dj", DEBUG=True, CELERY_TIMEZONE="UTC"
    )
    app.config_from_object(django, namespace="CELERY")
    assert app.broker_url == "memory://dj"


def test_conf_mapping_access() -> None:
    conf = Settings()
    conf["task_default_queue"] = "q"
    assert conf["task_default_queue"] == "q"
    assert "task_default_queue" in conf
    assert conf.get("nope", 1) == 1


def test_default_urls_are_embedded_sqlite() -> None:
    app = Celeriac("x", set_as_current=False)
    assert app.broker_url == "sqlite:///celeriac.db"
    assert app.result_backend_url == "sqlite:///celeriac.db"


def test_bad_broker_url_names_the_url() -> None:
    from celeriac.brokers import broker_from_url

    with pytest.raises(ConfigurationError, match="'nats://x'"):
        broker_from_url("nats://x")
    with pytest.raises(ConfigurationError, match="'localhost:6379'"):
        broker_from_url("localhost:6379")


def test_worker_middleware_holds_objects_not_import_paths() -> None:
    from celeriac.worker.middleware import Middleware

    assert Settings().worker_middleware == [] and Settings().worker_middleware is not (
        Settings().worker_middleware
    )
    conf = Settings()
    conf.update(worker_middleware=(Middleware,))
    assert conf.worker_middleware == [Middleware]
    with pytest.raises(ConfigurationError, match="import it and pass the object"):
        conf.update(worker_middleware=["proj.middleware.Audit"])
    with pytest.raises(ConfigurationError, match="must be"):
        conf.update(worker_middleware={"a": 1})
