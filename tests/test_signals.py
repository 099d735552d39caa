"""Signals: Celery's API (``celery.utils.dispatch.Signal``) and what each signal carries.

The API tests run on Celery's ``Signal`` and on celeriac's alike, so Celery is
the oracle for every behaviour they pin. The worker test runs the receivers of
``tests.apps.signals_app`` in a real Celery worker (prefork, on Redis) and in a
real celeriac worker (process pool, on SQLite), runs the same tasks on both,
and compares what every signal brought: its sender, its argument names, the
values that say what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, signals
from celeriac._sync import run_sync
from celeriac.cli.worker import configure_logging
from celeriac.errors import ContentDisallowed
from celeriac.protocol import Message, Outgoing
from celeriac.testing import WorkerProcess, memory_app, worker_thread
from celeriac.worker.process import announce_shutdown

from .celery_peers import ROOT, running
from .services import redis_url
from .worker_processes import wait_for

celery = pytest.importorskip("celery")
from celery.utils.dispatch import Signal as CelerySignal  # noqa: E402

TIMEOUT = 30.0
SIGNAL_CLASSES = pytest.mark.parametrize(
    "signal_class", [signals.Signal, CelerySignal], ids=["celeriac", "celery"]
)


@contextlib.contextmanager
def connected(sig: Any, receiver: Callable[..., Any], **options: Any) -> Iterator[None]:
    """``receiver`` connected to ``sig`` for the ``with`` block."""
    sig.connect(receiver, **options)
    try:
        yield
    finally:
        sig.disconnect(receiver, sender=options.get("sender"))


# --- the API, on Celery's Signal and on ours ---------------------------------------------


@SIGNAL_CLASSES
def test_connect_as_a_decorator_with_and_without_arguments(signal_class: Any) -> None:
    sig = signal_class(name="test")
    calls: list[tuple[str, object, dict[str, Any]]] = []

    @sig.connect  # type: ignore[untyped-decorator]
    def plain(sender: object = None, **kwargs: Any) -> str:
        calls.append(("plain", sender, kwargs))
        return "plain"

    @sig.connect(sender="only-me")  # type: ignore[untyped-decorator]
    def filtered(sender: object = None, **kwargs: Any) -> str:
        calls.append(("filtered", sender, kwargs))
        return "filtered"

    assert callable(plain) and callable(filtered)  # the decorators return the function
    assert sig.send(sender="someone", x=1) == [(plain, "plain")]
    assert [name for name, _, _ in calls] == ["plain"]
    assert calls[0][2] == {"signal": sig, "x": 1}
    assert sig.send(sender="only-me") == [(plain, "plain"), (filtered, "filtered")]
    assert sig.has_listeners("only-me") and sig.has_listeners()


@SIGNAL_CLASSES
def test_a_receiver_connects_once_and_disconnects(signal_class: Any) -> None:
    sig = signal_class(name="test")

    def receiver(**kwargs: Any) -> int:
        return 1

    sig.connect(receiver)
    sig.connect(receiver)
    sig.connect(lambda **kwargs: 2, weak=False, dispatch_uid="uid")
    sig.connect(lambda **kwargs: 3, weak=False, dispatch_uid="uid")  # the same uid: ignored
    assert [response for _, response in sig.send(sender=None)] == [1, 2]
    assert sig.disconnect(receiver) is True
    assert sig.disconnect(receiver) is False
    assert sig.disconnect(dispatch_uid="uid") is True
    assert sig.send(sender=None) == []
    assert not sig.has_listeners()


@SIGNAL_CLASSES
def test_a_receiver_must_take_keyword_arguments(signal_class: Any) -> None:
    def no_kwargs(sender: object) -> None: ...

    with pytest.raises(ValueError, match="keyword arguments"):
        signal_class(name="test").connect(no_kwargs)


@SIGNAL_CLASSES
def test_receivers_are_weak_unless_asked(signal_class: Any) -> None:
    sig = signal_class(name="test")

    class Listener:
        def on(self, **kwargs: Any) -> str:
            return "method"

    def function(**kwargs: Any) -> str:
        return "function"

    def strong(**kwargs: Any) -> str:
        return "strong"

    listener = Listener()
    sig.connect(listener.on)  # a bound method is made anew at each access: held by WeakMethod
    sig.connect(function)
    sig.connect(strong, weak=False)
    assert sorted(r for _, r in sig.send(sender=None)) == ["function", "method", "strong"]
    del listener, function, strong
    gc.collect()
    assert [r for _, r in sig.send(sender=None)] == ["strong"]
    assert len(sig.receivers) == 1


@SIGNAL_CLASSES
def test_a_raising_receiver_is_logged_and_the_others_still_run(
    signal_class: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sig = signal_class(name="the_signal")
    failure = RuntimeError("receiver failed")

    def raising(**kwargs: Any) -> None:
        raise failure

    def fine(**kwargs: Any) -> str:
        return "fine"

    sig.connect(raising)
    sig.connect(fine)
    with caplog.at_level(logging.ERROR):
        assert sig.send(sender=None) == [(raising, failure), (fine, "fine")]
    assert "receiver failed" in caplog.text


def test_the_log_line_names_the_signal(caplog: pytest.LogCaptureFixture) -> None:
    sig = signals.Signal(name="the_signal")

    def raising(**kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    sig.connect(raising)
    with caplog.at_level(logging.ERROR, logger="celeriac.signals"):
        sig.send(sender=None)
    (record,) = caplog.records
    assert "signal the_signal" in record.getMessage() and record.exc_info is not None


async def test_async_receivers_are_awaited_by_asend_and_run_by_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sig = signals.Signal(name="test")
    seen: list[str] = []

    async def receiver(sender: str, **kwargs: Any) -> str:
        await asyncio.sleep(0)
        seen.append(sender)
        return sender.upper()

    async def raising(**kwargs: Any) -> None:
        raise RuntimeError("async receiver failed")

    sig.connect(receiver)
    sig.connect(raising)
    with caplog.at_level(logging.ERROR, logger="celeriac.signals"):
        responses = await sig.asend(sender="from-async")
        # sync code running on this loop: the receiver runs to completion before send returns
        sync_responses = sig.send(sender="from-sync")
    assert seen == ["from-async", "from-sync"]
    assert responses[0] == (receiver, "FROM-ASYNC")
    assert sync_responses[0] == (receiver, "FROM-SYNC")
    assert isinstance(responses[1][1], RuntimeError)
    assert isinstance(sync_responses[1][1], RuntimeError)
    assert [
        r.getMessage().endswith("RuntimeError('async receiver failed')") for r in caplog.records
    ] == [True, True]


def test_every_celery_signal_of_the_brief_is_defined_with_celerys_arguments() -> None:
    from celery import signals as celery_signals

    for name in signals.__all__:
        if name == "Signal":
            continue
        ours, theirs = getattr(signals, name), getattr(celery_signals, name)
        assert ours.name == theirs.name == name
        assert ours.providing_args == theirs.providing_args, name


# --- the app's own signals, logging and imports -----------------------------------------


def test_app_signals_fire_once_at_finalize() -> None:
    app = memory_app()
    seen: list[tuple[str, object, list[str]]] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(sender: object = None, **kwargs: Any) -> None:
            seen.append((name, sender, sorted(kwargs)))

        return record

    receivers = {n: recorder(n) for n in ("configure", "after_configure", "after_finalize")}
    app.on_configure.connect(receivers["configure"])
    app.on_after_configure.connect(receivers["after_configure"])
    app.on_after_finalize.connect(receivers["after_finalize"])
    app.finalize()
    app.finalize()
    assert seen == [
        ("configure", app, ["signal"]),
        ("after_configure", app, ["signal", "source"]),
        ("after_finalize", app, ["signal"]),
    ]
    app.close()


def test_import_modules_raises_what_a_receiver_raised() -> None:
    app = memory_app()

    def refuse(**kwargs: Any) -> None:
        raise RuntimeError("no imports today")

    with connected(signals.import_modules, refuse), pytest.raises(RuntimeError, match="today"):
        app.import_modules()
    app.close()


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_setup_logging_receiver_configures_logging_instead(
    root_logging: logging.Logger,
) -> None:
    """As in Celery: with a setup_logging receiver, neither configures logging, and the
    receiver gets the same arguments from both."""
    from celery.app.log import Logging

    seen: list[dict[str, Any]] = []

    def take_over(sender: object = None, **kwargs: Any) -> None:
        seen.append({"sender": sender, "keys": sorted(kwargs), "loglevel": kwargs["loglevel"]})

    handlers = list(root_logging.handlers)
    celery_app = celery.Celery("logging", set_as_current=False)
    with connected(celery.signals.setup_logging, take_over):
        try:
            celery_app.log.setup_logging_subsystem(loglevel="INFO")
        finally:
            Logging._setup = False
    app = memory_app(worker_hijack_root_logger=True)
    with connected(signals.setup_logging, take_over):
        configure_logging(app, "INFO")
    assert root_logging.handlers == handlers
    theirs, ours = seen
    assert ours == theirs
    app.close()


def test_without_a_setup_logging_receiver_the_after_setup_signals_follow(
    root_logging: logging.Logger,
) -> None:
    seen: list[tuple[str, list[str], str]] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(sender: object = None, logger: Any = None, **kwargs: Any) -> None:
            seen.append((name, sorted(kwargs), logger.name))

        return record

    after_logger, after_task_logger = recorder("logger"), recorder("task_logger")
    app = memory_app(worker_hijack_root_logger=True)
    with (
        connected(signals.after_setup_logger, after_logger),
        connected(signals.after_setup_task_logger, after_task_logger),
    ):
        configure_logging(app, "WARNING")
    keys = ["colorize", "format", "logfile", "loglevel", "signal"]
    assert seen == [("logger", keys, "root"), ("task_logger", keys, "celeriac.task")]
    assert root_logging.level == logging.WARNING
    app.close()


def test_worker_shutting_down_carries_celerys_values_for_each_signal() -> None:
    """Celery's values come from its own handlers' definitions (``celery.apps.worker``):
    SIGTERM, Ctrl-C, a second Ctrl-C, SIGQUIT."""
    from celery.apps import worker as celery_worker

    defaults = {
        name: p.default
        for name, p in inspect.signature(celery_worker._shutdown_handler).parameters.items()
        if p.default is not inspect.Parameter.empty
    }

    def celerys(handler: Any, **override: Any) -> dict[str, Any]:
        options = {**defaults, **handler.keywords, **override}
        return {k: options[k] for k in ("sig", "how", "exitcode")}

    expected = [
        celerys(celery_worker.install_worker_term_handler),
        celerys(celery_worker.install_worker_int_handler),
        celerys(celery_worker.install_worker_term_hard_handler, sig="SIGINT"),  # on_SIGINT's
        celerys(celery_worker.install_worker_term_hard_handler),
    ]
    seen: list[dict[str, Any]] = []

    def record(sender: object = None, **kwargs: Any) -> None:
        seen.append({k: kwargs[k] for k in ("sig", "how", "exitcode")})

    with connected(signals.worker_shutting_down, record):
        announce_shutdown("w@host", signal.SIGTERM, cold=False)
        announce_shutdown("w@host", signal.SIGINT, cold=False)
        announce_shutdown("w@host", signal.SIGINT, cold=True)
        announce_shutdown("w@host", signal.SIGQUIT, cold=True)
    assert seen == expected


# --- in a worker ------------------------------------------------------------------------


def test_a_raising_receiver_does_not_break_the_task(caplog: pytest.LogCaptureFixture) -> None:
    app = memory_app()

    @app.task
    def double(x: int) -> int:
        return 2 * x

    def raising(**kwargs: Any) -> None:
        raise RuntimeError("prerun receiver failed")

    with (
        connected(signals.task_prerun, raising),
        connected(signals.task_postrun, raising),
        caplog.at_level(logging.ERROR, logger="celeriac.signals"),
        worker_thread(app),
    ):
        assert double.delay(21).get(timeout=TIMEOUT) == 42
    assert "signal task_prerun" in caplog.text and "signal task_postrun" in caplog.text
    app.close()


def test_async_receivers_run_on_the_worker_loop_and_sender_filters() -> None:
    app = memory_app()

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    def other() -> None: ...

    seen: list[tuple[str, bool]] = []

    async def postrun(task_id: str, state: str, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        seen.append((state, threading.current_thread().name == "celeriac-test-worker"))

    with connected(signals.task_postrun, postrun, sender=double), worker_thread(app):
        other.delay().get(timeout=TIMEOUT)
        assert double.delay(1).get(timeout=TIMEOUT) == 2
    assert seen == [("SUCCESS", True)]
    app.close()


async def test_an_undecodable_message_is_a_task_rejected() -> None:
    app = memory_app()
    rejected: list[tuple[object, Any]] = []

    def on_rejected(sender: object = None, message: Any = None, exc: Any = None, **kw: Any) -> None:
        rejected.append((message.headers.get("id"), exc))

    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "x", "id": task_id, "root_id": task_id}
    message = Message(headers, b"!!", "application/x-python-serialize", "binary", {})
    with connected(signals.task_rejected, on_rejected), worker_thread(app):
        broker = await app.abroker()
        await broker.publish([Outgoing(app.conf.task_default_queue, message)])
        await asyncio.to_thread(wait_for, lambda: rejected, TIMEOUT, "task_rejected")
    ((rejected_id, exc),) = rejected
    assert rejected_id == task_id and isinstance(exc, ContentDisallowed)
    await app.aclose()


# --- the same receivers in a real Celery worker and a real celeriac worker ---------------

PUBLISH = frozenset({"before_task_publish", "after_task_publish"})
"""Sent by the client for each task, and in the worker for a retry's re-publish."""


async def _publish(app: Celeriac, outgoing: Outgoing) -> None:
    broker = await app.abroker()
    await broker.publish([outgoing])


def records(path: Path, side: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in lines if r["side"] == side]


def ready(path: Path, side: str) -> bool:
    return any(r["signal"] == "worker_ready" for r in records(path, side))


def finished(path: Path, side: str) -> bool:
    """Every task sent has come to its end on ``side``."""
    seen = records(path, side)
    postruns = sum(r["signal"] == "task_postrun" for r in seen)
    names = {r["signal"] for r in seen}
    return (
        postruns >= 5 and {"task_unknown", "task_rejected", "task_revoked", "header_echo"} <= names
    )


def summary(found: list[dict[str, Any]], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """signal -> sorted distinct (sender kind, argument names, values)."""
    out: dict[str, set[str]] = {}
    for r in found:
        if r["signal"] in skip:
            continue
        entry = json.dumps([r.get("sender"), r.get("keys"), r.get("values")], sort_keys=True)
        out.setdefault(r["signal"], set()).add(entry)
    return {name: sorted(entries) for name, entries in out.items()}


def send_the_tasks(app: Any, queue: str) -> None:
    """The same calls, and a message that names no task, on either side."""
    if isinstance(app, Celeriac):
        message = Message({"id": str(uuid.uuid4())}, b"{}", "application/json", "utf-8", {})
        run_sync(lambda: _publish(app, Outgoing(queue, message)))
    else:
        with app.producer_or_acquire() as producer:
            producer.publish({}, exchange="", routing_key=queue, headers={"id": "no task"})
    app.send_task("signals.add", (1, 2), queue=queue)
    app.send_task("signals.boom", queue=queue)
    app.send_task("signals.retry_once", queue=queue)
    app.send_task("signals.header_echo", queue=queue)
    app.send_task("signals.nope", queue=queue)
    app.send_task("signals.add", (1, 2), queue=queue, expires=-10)


def test_a_celeriac_worker_sends_what_a_celery_worker_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"signals-{uuid.uuid4().hex[:8]}"
    celery_broker = redis_url(prefixed=False)
    database = f"sqlite:///{tmp_path / 'celeriac.db'}"
    worker_log, client_log = tmp_path / "worker.log", tmp_path / "client.log"
    env = {
        "SIGNALS_LOG": str(worker_log),
        "SIGNALS_QUEUE": queue,
        "SIGNALS_CELERY_BROKER": celery_broker,
        "CELERIAC_BROKER_URL": database,
        "CELERIAC_RESULT_BACKEND": database,
        "PYTHONPATH": str(ROOT),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SIGNALS_LOG", str(client_log))  # this process: the publish side
    from tests.apps import signals_app

    celery_command = [
        *("celery", "-A", "tests.apps.signals_app:celery_app", "worker", "-P", "prefork"),
        *("-c", "1", "-Q", queue, "-l", "warning", "--without-gossip", "--without-mingle"),
    ]
    celeriac_worker = WorkerProcess(
        "tests.apps.signals_app", "-P", "process", "-c", "1", "-Q", queue,
        cwd=ROOT, env=env, log=tmp_path / "celeriac-worker.log",
    )  # fmt: skip
    with running(celery_command, env, tmp_path / "celery-worker.log") as celery_worker:
        with celeriac_worker:
            wait_for(lambda: ready(worker_log, "celery"), TIMEOUT, "Celery's worker ready")
            send_the_tasks(signals_app.celery_app, queue)
            send_the_tasks(signals_app.app, queue)
            wait_for(lambda: finished(worker_log, "celery"), TIMEOUT, "Celery's tasks")
            wait_for(lambda: finished(worker_log, "celeriac"), TIMEOUT, "celeriac's tasks")
        celery_worker.send_signal(signal.SIGTERM)
        celery_worker.wait(TIMEOUT)

    celery_side, celeriac_side = records(worker_log, "celery"), records(worker_log, "celeriac")
    skip = frozenset({"on_after_fork"})  # Celery: only if its pool was made first
    ours, theirs = summary(celeriac_side, skip), summary(celery_side, skip)
    assert set(ours) == set(theirs) == {*signals_app.RECORDED, "header_echo"}
    for name in theirs:
        assert ours[name] == theirs[name], name
    # the publish side, in this process
    client = summary(records(client_log, "celeriac")), summary(records(client_log, "celery"))
    assert set(client[0]) == set(client[1]) == PUBLISH
    assert client[0] == client[1]
    # the lifecycle in order, on both
    for side in (celery_side, celeriac_side):
        order = [r["signal"] for r in side]
        for first, then in [
            ("import_modules", "celeryd_init"),
            ("celeryd_init", "celeryd_after_setup"),
            ("worker_init", "worker_process_init"),
            ("worker_process_init", "task_prerun"),
            ("worker_shutting_down", "worker_process_shutdown"),
            ("worker_process_shutdown", "worker_shutdown"),
        ]:
            assert order.index(first) < order.index(then), (first, then)
    for side in (celery_side, celeriac_side):  # a pool child's signals come from the child
        (child,) = {r["pid"] for r in side if r["signal"] == "worker_process_init"}
        assert {r["pid"] for r in side if r["signal"] == "task_prerun"} == {child}
    assert [r["pid"] for r in celeriac_side if r["signal"] == "on_after_fork"] == [child]
