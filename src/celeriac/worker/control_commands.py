"""The remote-control commands a worker answers, in Celery's answer shapes.

Names, arguments and answers are ``celery.worker.control``'s, so ``celery
inspect``/``celery control`` and Flower read celeriac's answers as Celery's:
``ping`` -> ``{"ok": "pong"}``, a change -> ``{"ok": "..."}`` or
``{"error": "..."}``, ``active`` -> a list of
``celery.worker.request.Request.info()`` dicts.

:data:`COMMANDS` run in the node's voice. What every process must report or
apply (``local_operations.py``), the voice runs here and in its siblings
through ``NodeLink.gather`` and merges the answers; what only the voice needs
to know (the registry, the settings, the queues, the revokes) it answers alone.

``scheduled`` holds no ETA task: celeriac keeps none in worker memory (delays
wait in the broker); a worker running beat (``-B``) lists beat's next ticks.
"""

from __future__ import annotations

import logging
import os
import signal as signals
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..beat.entries import BeatLazyFunc, entries_from, tick_id
from ..beat.plan import upcoming
from ..control.mailbox import clock
from ..routing import configured_queues
from ..schedules.base import app_zone
from ..settings import Settings
from ..url_schemes import redact_url
from .context import WorkerContext
from .local_operations import FOLLOW
from .middleware.rate_limits import parse_rate
from .node_link import NodeLink

__all__ = ["COMMANDS", "NO_REPLY", "Panel"]

logger = logging.getLogger("celeriac.worker")

NO_REPLY: Any = object()
"""What ``shutdown`` answers: nothing (Celery's worker exits without a reply)."""

DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")


@dataclass(slots=True)
class Panel:
    """What a command handler works with: the voice's context and its link to siblings."""

    ctx: WorkerContext
    link: NodeLink


Command = Callable[..., Awaitable[Any]]
COMMANDS: dict[str, Command] = {}


def _command(*aliases: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        for name in (fn.__name__.removeprefix("_"), *aliases):
            COMMANDS[name] = fn
        return fn

    return register


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


def _flat(answers: Iterable[list[Any]]) -> list[Any]:
    return [item for answer in answers for item in answer]


# -- inspect --------------------------------------------------------------------------


@_command()
async def _ping(panel: Panel, **_: Any) -> Any:
    return ok("pong")


@_command()
async def _clock(panel: Panel, **_: Any) -> Any:
    return {"clock": clock()}


@_command("dump_active")
async def _active(panel: Panel, safe: bool | None = False, **_: Any) -> Any:
    return _flat(await panel.link.gather("active", safe=bool(safe)))


@_command("dump_reserved")
async def _reserved(panel: Panel, **_: Any) -> Any:
    return _flat(await panel.link.gather("reserved"))


@_command("dump_schedule")
async def _scheduled(panel: Panel, **_: Any) -> Any:
    """ETA tasks wait in the broker, never in a worker. A worker running beat (``-B``)
    lists each entry's next tick instead, in Celery's form, with the id it will carry."""
    if not panel.ctx.beat:
        return []
    app = panel.ctx.app
    store = (await panel.ctx.connections.abroker()).beat_store()
    zone = app_zone(app)

    def shown(value: Any) -> Any:  # a lazy value is computed at the send, not here
        return repr(value) if isinstance(value, BeatLazyFunc) else value

    ticks = upcoming(
        entries_from(app.conf.beat_schedule), await store.last_runs(), time.time(), zone
    )
    return [
        {
            "eta": datetime.fromtimestamp(tick, zone).isoformat(),
            "priority": entry.options.get("priority"),
            "request": {
                "id": tick_id(entry.name, tick),
                "name": entry.task,
                "args": [shown(v) for v in entry.args],
                "kwargs": {k: shown(v) for k, v in entry.kwargs.items()},
                "type": entry.task,
                "hostname": panel.ctx.hostname,
                "time_start": None,
                "acknowledged": False,
                "delivery_info": {"periodic_task_name": entry.name},
                "worker_pid": None,
            },
        }
        for entry, tick in ticks
    ]


@_command("dump_revoked")
async def _revoked(panel: Panel, **_: Any) -> Any:
    return list(panel.ctx.revokes.ids())


@_command()
async def _hello(panel: Panel, from_node: str, revoked: Any = None, **_: Any) -> Any:
    """A Celery worker starting (its mingle step) sends its revoked ids and takes ours."""
    if from_node == panel.ctx.hostname:
        return None
    if revoked:
        ids = [str(task_id) for task_id in revoked]
        until = _until(panel)
        await panel.link.gather("revoke", ids=ids, terminate=False, signal="SIGTERM", until=until)
    return {"revoked": panel.ctx.revokes.ids(), "clock": clock()}


@_command()
async def _query_task(panel: Panel, ids: Any = (), **_: Any) -> Any:
    wanted = [ids] if isinstance(ids, str) else list(ids or [])
    found: dict[str, Any] = {}
    for answer in await panel.link.gather("query", ids=wanted):
        found.update(answer)
    return found


@_command("dump_tasks")
async def _registered(
    panel: Panel, taskinfoitems: Iterable[str] | None = None, builtins: bool = False, **_: Any
) -> Any:
    tasks = panel.ctx.app.tasks
    items = [i for i in (taskinfoitems or DEFAULT_TASK_INFO_ITEMS) if not str(i).startswith("_")]
    names = sorted(n for n in tasks if builtins or not n.startswith("celery."))

    def info(name: str) -> str:
        fields = {i: getattr(tasks[name], i, None) for i in items}
        shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{name} [{shown}]" if shown else name

    return [info(name) for name in names]


@_command()
async def _stats(panel: Panel, **_: Any) -> Any:
    ctx = panel.ctx
    answers = await panel.link.gather("stats")
    total: Counter[str] = Counter()
    rusage: Counter[str] = Counter()
    for answer in answers:
        total.update(answer["total"])
        rusage.update(answer["rusage"])
    rusage["maxrss"] = max(a["rusage"]["maxrss"] for a in answers)
    conf = ctx.app.conf
    return {
        "total": dict(total),
        "pid": ctx.node.supervisor or os.getpid(),
        "clock": str(clock()),
        "uptime": int(time.time() - ctx.state.started_at),
        "pool": {
            "implementation": "celeriac:process" if ctx.node.supervisor else "celeriac:in-process",
            "max-concurrency": ctx.concurrency * ctx.processes,
            "processes": ctx.node.totals().pids,
            "max-tasks-per-child": conf.worker_max_tasks_per_child or "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0],
            "writes": "N/A",
        },
        "broker": _broker_info(ctx.app.broker_url),
        "prefetch_count": ctx.concurrency * ctx.processes * conf.worker_prefetch_multiplier,
        "rusage": dict(rusage),
    }


def _broker_info(url: str) -> dict[str, Any]:
    """The broker as ``kombu.Connection.info()`` shows it (no password)."""
    parts = urlsplit(url)
    return {
        "hostname": parts.hostname,
        "userid": parts.username,
        "virtual_host": parts.path.lstrip("/") or "/",
        "port": parts.port,
        "transport": parts.scheme,
        "ssl": parts.scheme in ("rediss", "amqps"),
        "uri_prefix": None,
    }


@_command()
async def _active_queues(panel: Panel, **_: Any) -> Any:
    table = configured_queues(panel.ctx.app.conf)
    answer = []
    for name in panel.ctx.state.queues:
        queue = table.get(name)
        exchange = getattr(queue, "exchange", None)
        answer.append(
            {
                "name": name,
                "exchange": {
                    "name": getattr(exchange, "name", name),
                    "type": getattr(exchange, "type", "direct"),
                },
                "routing_key": (queue.routing_key if queue else "") or name,
                "durable": queue.durable if queue else True,
                "exclusive": queue.exclusive if queue else False,
                "auto_delete": queue.auto_delete if queue else False,
                "no_ack": False,
                "alias": queue.alias if queue else None,
                "queue_arguments": dict(queue.queue_arguments or {}) if queue else None,
                "bindings": [],
            }
        )
    return answer


@_command("dump_conf")
async def _conf(panel: Panel, with_defaults: bool = False, **_: Any) -> Any:
    settings = panel.ctx.app.conf.as_dict()
    if not with_defaults:
        defaults = Settings().as_dict()
        settings = {k: v for k, v in settings.items() if v != defaults.get(k)}
    plain: dict[str, Any] = orjson.loads(orjson.dumps(settings, default=repr))
    return {k: redact_url(v) if isinstance(v, str) else v for k, v in plain.items()}


# -- control --------------------------------------------------------------------------


def _until(panel: Panel) -> float:
    expires = panel.ctx.app.conf.worker_revoke_expires
    return time.time() + float(expires)


@_command()
async def _revoke(
    panel: Panel,
    task_id: str | list[str] | None = None,
    terminate: bool = False,
    signal: str | None = None,
    **_: Any,
) -> Any:
    ids = [task_id] if isinstance(task_id, str) else list(task_id or [])
    answers = await panel.link.gather(  # each process also stores them: Celery's clients don't
        "revoke",
        ids=ids,
        terminate=bool(terminate),
        signal=signal or "SIGTERM",
        until=_until(panel),
    )
    if not terminate:
        logger.info("tasks flagged as revoked: %s", ", ".join(ids))
        return ok(f"tasks {set(ids)} flagged as revoked")
    terminated = list(dict.fromkeys(_flat(answers)))
    if not terminated:
        return ok("terminate: tasks unknown")
    return ok(f"terminate: {', '.join(terminated)}")


@_command()
async def _terminate(panel: Panel, signal: str, task_id: Any = None, **_: Any) -> Any:
    return await _revoke(panel, task_id, terminate=True, signal=signal)


@_command()
async def _revoke_by_stamped_headers(
    panel: Panel, headers: Any, terminate: bool = False, signal: str | None = None, **_: Any
) -> Any:
    if isinstance(headers, list):
        headers = dict(h.split("=", 1) for h in headers)
    answers = await panel.link.gather(
        "revoke_stamped",
        headers=headers,
        terminate=bool(terminate),
        signal=signal or "SIGTERM",
        until=_until(panel),
    )
    if not terminate:
        return ok(f"headers {headers} flagged as revoked, but not terminated")
    terminated = _flat(answers)
    if not terminated:
        return ok(f"headers {headers} were not terminated")
    return ok(f"headers {headers} revoked")


@_command()
async def _rate_limit(panel: Panel, task_name: str, rate_limit: Any, **_: Any) -> Any:
    try:
        parse_rate(rate_limit)
    except Exception as exc:
        return nok(f"Invalid rate limit string: {exc!r}")
    if task_name not in panel.ctx.app.tasks:
        logger.error("rate limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    await panel.link.gather("rate_limit", task_name=task_name, rate_limit=rate_limit)
    if not rate_limit:
        logger.info("rate limits disabled for tasks of type %s", task_name)
        return ok("rate limit disabled successfully")
    logger.info("new rate limit for tasks of type %s: %s", task_name, rate_limit)
    return ok("new rate limit set successfully")


@_command()
async def _time_limit(
    panel: Panel,
    task_name: str | None = None,
    hard: float | None = None,
    soft: float | None = None,
    **_: Any,
) -> Any:
    if task_name not in panel.ctx.app.tasks:
        logger.error("change time limit attempt for unknown task %s", task_name)
        return nok("unknown task")
    await panel.link.gather("time_limit", task_name=task_name, soft=soft, hard=hard)
    logger.info("new time limits for tasks of type %s: soft=%s hard=%s", task_name, soft, hard)
    return ok("time limits set successfully")


@_command()
async def _add_consumer(panel: Panel, queue: str, **_: Any) -> Any:
    await panel.link.gather("add_queue", queue=queue, timeout=FOLLOW + 0.1)
    return ok(f"add consumer {queue}")


@_command()
async def _cancel_consumer(panel: Panel, queue: str, **_: Any) -> Any:
    await panel.link.gather("cancel_queue", queue=queue, timeout=FOLLOW + 0.1)
    return ok(f"no longer consuming from {queue}")


@_command()
async def _enable_events(panel: Panel, **_: Any) -> Any:
    before = await panel.link.gather("task_events", on=True)
    return ok("task events already enabled" if all(before) else "task events enabled")


@_command()
async def _disable_events(panel: Panel, **_: Any) -> Any:
    before = await panel.link.gather("task_events", on=False)
    return ok("task events disabled" if any(before) else "task events already disabled")


@_command()
async def _heartbeat(panel: Panel, **_: Any) -> Any:
    """Send a worker-heartbeat now (``celery events`` asks for one when it starts)."""
    if panel.ctx.state.send_heartbeat is not None:
        panel.ctx.state.send_heartbeat()
    return None


def _pool_of(panel: Panel, command: str) -> None:
    if not panel.ctx.node.supervisor:
        raise NotImplementedError(f"{command}: this worker runs one process (no process pool)")


@_command()
async def _pool_grow(panel: Panel, n: int = 1, **_: Any) -> Any:
    _pool_of(panel, "pool_grow")
    node = panel.ctx.node
    if node.autoscale_bounds is not None:
        return nok("pool_grow is not supported with autoscale. Adjust autoscale range instead.")
    node.wanted = node.wanted + int(n)
    return ok("pool will grow")


@_command()
async def _pool_shrink(panel: Panel, n: int = 1, **_: Any) -> Any:
    _pool_of(panel, "pool_shrink")
    node = panel.ctx.node
    if node.autoscale_bounds is not None:
        return nok("pool_shrink is not supported with autoscale. Adjust autoscale range instead.")
    node.wanted = node.wanted - int(n)
    return ok("pool will shrink")


@_command()
async def _autoscale(panel: Panel, max: int | None = None, min: int | None = None, **_: Any) -> Any:
    _pool_of(panel, "autoscale")
    high, low = panel.ctx.node.set_autoscale(max, min)  # ValueError when autoscale is off
    return ok(f"autoscale now max={high} min={low}")


@_command()
async def _shutdown(panel: Panel, msg: str = "Got shutdown from remote", **_: Any) -> Any:
    logger.warning(msg)
    if panel.ctx.node.supervisor:
        os.kill(panel.ctx.node.supervisor, signals.SIGTERM)  # a warm shutdown of every child
    else:
        panel.ctx.state.request_stop("shutdown by remote control")
    return NO_REPLY
