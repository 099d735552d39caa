"""Routing as Celery's routing guide: each case is sent by the real Celery too, and
celeriac must pick the same queue, exchange, routing key and priority.

Celery's choice is read from its ``before_task_publish`` signal, which carries the
exchange and routing key it publishes with and the queue it declares.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish
from kombu.common import Broadcast as KombuBroadcast
from kombu.entity import Exchange as KombuExchange
from kombu.entity import Queue as KombuQueue
from kombu.transport import memory

from celeriac import Broadcast, Celeriac, Exchange, Queue
from celeriac._sync import run_sync
from celeriac.amqp.broker import AmqpBroker
from celeriac.errors import ConfigurationError
from celeriac.sending import SendOptions
from celeriac.testing import WorkerProcess

from .services import rabbitmq_url, rabbitmq_vhost
from .worker_processes import ROOT, run_lines, runs, wait_for, worker_env

Where = tuple[str, str, str, int]
"""(queue, exchange, routing key, priority) of one publish."""


def celery_sends(config: dict[str, Any], name: str, **options: Any) -> Where:
    """Where the real Celery publishes ``name`` under ``config``."""
    memory.Transport.global_state.clear()  # type: ignore[no-untyped-call]  # fresh exchanges
    app = Celery("routing", broker="memory://", set_as_current=False)
    app.conf.update(config)
    seen: dict[str, Any] = {}

    def grab(**kw: Any) -> None:
        seen.update(kw)

    before_task_publish.connect(grab, weak=False)
    try:
        app.send_task(name, **options)
    finally:
        before_task_publish.disconnect(grab)
    declared = seen["declare"]
    queue = declared[0].name if declared else ""
    return queue, seen["exchange"], seen["routing_key"], seen["properties"].get("priority") or 0


def celeriac_sends(config: dict[str, Any], name: str, **options: Any) -> Where:
    """Where celeriac publishes ``name``: the queue, and on RabbitMQ the exchange and
    routing key (``delivery_info``; absent: straight to the queue)."""
    app = Celeriac("routing", broker="memory://routing", set_as_current=False, **config)
    outgoing = app.build_outgoing(name, (), {}, SendOptions.from_kwargs(options))
    info = outgoing.message.properties.get("delivery_info")
    exchange, key = (info["exchange"], info["routing_key"]) if info else ("", outgoing.queue)
    return outgoing.queue, exchange, key, outgoing.priority


def kombu_queues(queues: list[Queue]) -> list[Any]:
    """The same queues as kombu objects, for Celery."""
    return [
        KombuQueue(  # type: ignore[no-untyped-call]
            q.name,
            KombuExchange(q.exchange.name, q.exchange.type)  # type: ignore[no-untyped-call]
            if isinstance(q.exchange, Exchange)
            else None,
            routing_key=q.routing_key or None,
        )
        for q in queues
    ]


def same_as_celery(config: dict[str, Any], name: str, **options: Any) -> Where:
    celery_config = dict(config)
    if "task_queues" in config:
        celery_config["task_queues"] = kombu_queues(config["task_queues"])
    expected = celery_sends(celery_config, name, **options)
    ours = celeriac_sends(config, name, **options)
    if expected[0] == "":  # a fanout exchange: Celery declares no queue, names none
        ours = ("", *ours[1:])
    assert ours == expected
    return ours


MEDIA = [
    Queue("default", Exchange("default"), routing_key="default"),
    Queue("videos", Exchange("media", "topic"), routing_key="media.video"),
    Queue("images", Exchange("media", "topic"), routing_key="media.image"),
]


def test_glob_and_regex_keys() -> None:
    routes = {
        "feed.tasks.import_feed": "feeds",
        "web.*": {"queue": "web"},
        re.compile(r"(image|video)\.tasks\..*"): {"queue": "media", "priority": 7},
    }
    config = {"task_routes": routes}
    assert same_as_celery(config, "feed.tasks.import_feed")[0] == "feeds"
    assert same_as_celery(config, "web.tasks.render")[0] == "web"
    assert same_as_celery(config, "video.tasks.encode")[::3] == ("media", 7)
    assert same_as_celery(config, "other.task")[0] == "celery"


def test_routes_in_order_and_router_functions() -> None:
    def route_task(
        name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
    ) -> dict[str, Any] | None:
        if name.startswith("video."):
            return {"queue": "videos", "routing_key": "media.video.hd"}
        return None

    config = {"task_queues": MEDIA, "task_routes": [route_task, {"*": {"queue": "images"}}]}
    assert same_as_celery(config, "video.compress")[:3] == ("videos", "media", "media.video.hd")
    assert same_as_celery(config, "image.crop")[:3] == ("images", "media", "media.image")


def test_call_options_win_over_routes() -> None:
    config = {"task_queues": MEDIA, "task_routes": {"video.*": {"queue": "videos"}}}
    assert same_as_celery(config, "video.cut", queue="default")[0] == "default"
    assert same_as_celery(config, "video.cut", routing_key="media.video.4k")[2] == "media.video.4k"
    assert same_as_celery(config, "video.cut", priority=3)[3] == 3


def test_default_exchange_and_routing_key() -> None:
    config = {
        "task_default_queue": "jobs",
        "task_default_exchange": "tasks",
        "task_default_exchange_type": "topic",
        "task_default_routing_key": "task.default",
    }
    assert same_as_celery(config, "any.task") == ("jobs", "tasks", "task.default", 0)


def test_missing_queues_are_created_unless_forbidden() -> None:
    config: dict[str, Any] = {"task_queues": MEDIA, "task_routes": {"x.*": "elsewhere"}}
    assert same_as_celery(config, "x.y")[0] == "elsewhere"
    config["task_create_missing_queues"] = False
    with pytest.raises(ConfigurationError, match="'elsewhere' missing from task_queues"):
        celeriac_sends(config, "x.y")
    assert same_as_celery(config, "other", queue="videos")[0] == "videos"


def test_kombu_queue_objects_are_accepted() -> None:
    config = {
        "task_queues": kombu_queues(MEDIA),
        "task_routes": {"video.*": {"queue": "videos", "routing_key": "media.video.sd"}},
    }
    assert celeriac_sends(config, "video.cut") == ("videos", "media", "media.video.sd", 0)


def test_broadcast_goes_to_the_fanout_exchange() -> None:
    config = {
        "task_queues": [Broadcast("broadcast_tasks")],
        "task_routes": {"tasks.reload_cache": {"queue": "broadcast_tasks"}},
    }
    celery_config = {
        "task_queues": [KombuBroadcast("broadcast_tasks")],  # type: ignore[no-untyped-call]
        "task_routes": config["task_routes"],
    }
    expected = celery_sends(celery_config, "tasks.reload_cache")
    ours = celeriac_sends(config, "tasks.reload_cache")
    assert expected[1:3] == ours[1:3] and ours[1] == "broadcast_tasks"
    assert ours[0].startswith("bcast.")


def test_import_paths_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="import it and pass the object"):
        celeriac_sends({"task_routes": ["proj.routers.route_task"]}, "t")


@pytest.fixture
def worker_app() -> Iterator[Celeriac]:
    app = Celeriac(
        "routing", broker="memory://routing-worker", backend="memory://", set_as_current=False
    )
    yield app
    app.close()


def test_a_worker_consumes_every_configured_queue(worker_app: Celeriac) -> None:
    from celeriac.worker import choose_config

    worker_app.conf.update(task_queues=MEDIA)
    assert choose_config(worker_app, pool="thread").queues == ["default", "videos", "images"]
    worker_app.conf.update(task_queues=[Broadcast("bc")])
    [own] = choose_config(worker_app, pool="thread", queues=["bc"]).queues
    assert own.startswith("bcast.")


# -- RabbitMQ: exchanges and routing keys, with real workers ---------------------------
RABBIT_APP = '''
"""Celery's routing guide on RabbitMQ: a topic exchange and a broadcast."""
import os

from celeriac import Broadcast, Celeriac, Exchange, Queue
from celeriac._sync import run_sync
from celeriac.amqp.broker import AmqpBroker

app = Celeriac("rabbit_routes")
app.conf.update(
    # declared as Celery declares them (no x-max-priority), so Celery peers can share them
    broker_transport_options={"plain_queues": ["celery", "videos", "images"]},
    task_queues=[
        Queue("videos", Exchange("media", "topic"), routing_key="media.video.#"),
        Queue("images", Exchange("media", "topic"), routing_key="media.image.#"),
        Broadcast("broadcast_tasks"),
    ],
    task_routes={
        "rabbit_routes.encode": {"queue": "videos", "routing_key": "media.video.hd"},
        # an explicit exchange and key win over the queue's: this lands in "images"
        "rabbit_routes.thumbnail": {
            "queue": "videos", "exchange": "media", "routing_key": "media.image.small"
        },
        "rabbit_routes.reload": {"queue": "broadcast_tasks"},
    },
)


def _ran(what: str) -> str:
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{what} {os.getpid()}\\n")
    return what


@app.task(name="rabbit_routes.encode")
def encode() -> str:
    return _ran("encode")


@app.task(name="rabbit_routes.thumbnail")
def thumbnail() -> str:
    return _ran("thumbnail")


@app.task(name="rabbit_routes.reload")
def reload() -> str:
    return _ran("reload")
'''


@pytest.fixture
def rabbit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "rabbit_routes.py").write_text(RABBIT_APP)
    results = f"sqlite:///{tmp_path}/results.db"
    env = {
        **worker_env(rabbitmq_url(), results, tmp_path),
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rabbit_routes", None)
    return env


def rabbit_worker(env: dict[str, str], tmp_path: Path, name: str, *args: str) -> WorkerProcess:
    return WorkerProcess(
        "rabbit_routes", "-P", "solo", *args, cwd=ROOT, env=env, log=tmp_path / f"{name}.log"
    ).start()


@pytest.mark.slow
def test_rabbitmq_routes_through_topic_exchanges(
    rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    import rabbit_routes  # type: ignore[import-not-found]

    worker = rabbit_worker(rabbit_env, tmp_path, "images", "-Q", "images")
    try:
        # Routed to queue "videos" but published to "media" with an image key: "images".
        assert rabbit_routes.thumbnail.delay().get(timeout=20) == "thumbnail"
    finally:
        worker.stop()
    worker = rabbit_worker(rabbit_env, tmp_path, "videos", "-Q", "videos")
    try:
        assert rabbit_routes.encode.delay().get(timeout=20) == "encode"
    finally:
        worker.stop()
        rabbit_routes.app.close()


def consuming(app: Celeriac, worker: WorkerProcess) -> bool:
    """Whether ``worker`` consumes its broadcast queue (named in its banner) yet: a
    broadcast reaches only the queues bound when it is published, as in Celery."""
    found = re.search(r"bcast\.[0-9a-f-]+", worker.log())
    if found is None:
        return False

    async def probe() -> bool:
        broker = await app.abroker()
        assert isinstance(broker, AmqpBroker)
        channel = await broker.channel()
        try:
            raw = await channel.get_underlay_channel()
            declared = await raw.queue_declare(broker.name(found.group()), passive=True)
            return bool(declared.consumer_count)
        except Exception:  # not declared yet: the passive declare closes the channel
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    return run_sync(probe)


@pytest.mark.slow
def test_rabbitmq_broadcast_reaches_every_worker(
    rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    import rabbit_routes

    workers = [rabbit_worker(rabbit_env, tmp_path, f"w{i}") for i in range(2)]
    try:
        for w in workers:
            wait_for(partial(consuming, rabbit_routes.app, w), 20, "broadcast queue bound")
        rabbit_routes.reload.delay()
        wait_for(lambda: runs(rabbit_env)["reload"] == 2, 20, "a copy in each worker")
        pids = {fields[1] for fields in run_lines(rabbit_env)}
        assert pids == {str(w.proc.pid) for w in workers if w.proc is not None}
        with pytest.raises(ConfigurationError, match="cannot be delayed"):
            rabbit_routes.reload.apply_async(countdown=5)
    finally:
        for w in workers:
            w.stop()
        rabbit_routes.app.close()


@pytest.mark.slow
def test_a_celery_client_routes_through_a_topic_exchange_to_a_celeriac_worker(
    rabbit_env: dict[str, str], tmp_path: Path
) -> None:
    """Celery publishes to exchange ``media`` with an image key; the celeriac worker bound
    ``images`` to it as Celery binds it, and runs the task."""
    with rabbitmq_vhost(f"celeriac-routing-{os.getpid()}") as url:
        env = {**rabbit_env, "CELERIAC_BROKER_URL": url}
        worker = rabbit_worker(env, tmp_path, "images", "-Q", "images")
        client = Celery("client", broker=url, set_as_current=False)
        client.conf.update(
            task_queues=kombu_queues(
                [
                    Queue("videos", Exchange("media", "topic"), routing_key="media.video.#"),
                    Queue("images", Exchange("media", "topic"), routing_key="media.image.#"),
                ]
            ),
            task_routes={
                "rabbit_routes.thumbnail": {
                    "queue": "videos",
                    "exchange": "media",
                    "routing_key": "media.image.small",
                }
            },
        )
        try:
            client.send_task("rabbit_routes.thumbnail")
            wait_for(lambda: runs(env)["thumbnail"] == 1, 20, "the task ran")
        finally:
            client.close()
            worker.stop()
