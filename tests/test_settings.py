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


def test_celery_values_mean_what_they_mean_in_celery() -> None:
    from datetime import timedelta

    conf = Settings()
    conf.update(worker_pool="prefork", result_expires=timedelta(hours=2), task_annotations=None)
    assert (conf.worker_pool, conf.result_expires, conf.task_annotations) == ("process", 7200.0, {})
    conf.update(worker_pool="threads")
    assert conf.worker_pool == "thread"


def test_timezone_must_be_a_known_zone() -> None:
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        Settings().update(timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("zone", "enable_utc"), [("Europe/Berlin", True), ("America/New_York", False), (None, True)]
)
def test_etas_are_written_in_the_apps_time_zone_as_celery_writes_them(
    zone: str | None, enable_utc: bool
) -> None:
    """Countdowns and expiry times carry the app's zone offset, as Celery's headers do;
    a naive ``eta`` means the same instant to celeriac as to Celery's worker (UTC)."""
    from datetime import datetime

    from celery import Celery
    from celery.utils.time import maybe_make_aware

    from celeriac.sending import SendOptions

    celery = Celery(set_as_current=False)
    celery.conf.update(timezone=zone, enable_utc=enable_utc)
    app = Celeriac("x", broker="memory://tz", timezone=zone, enable_utc=enable_utc)
    theirs = celery.amqp.as_task_v2("id", "t", countdown=60, expires=120).headers
    ours = app.build_outgoing("t", (), {}, SendOptions(countdown=60, expires=120)).message.headers
    for header in ("eta", "expires"):
        assert ours[header][-6:] == theirs[header][-6:]  # the same UTC offset
        gap = datetime.fromisoformat(ours[header]) - datetime.fromisoformat(theirs[header])
        assert abs(gap.total_seconds()) < 5
    naive = datetime(2031, 1, 15, 12, 0)
    eta = app.build_outgoing("t", (), {}, SendOptions(eta=naive)).message.headers["eta"]
    assert datetime.fromisoformat(eta) == maybe_make_aware(naive, celery.timezone)
    app.close()
