"""How a worker runs: pool, concurrency, queues; and how the defaults are chosen."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..brokers import broker_class
from ..errors import ConfigurationError
from ..routing import configured_queues
from .autoscale import parse_autoscale

if TYPE_CHECKING:
    from ..app import Celeriac

POOLS = ("process", "thread", "async", "solo")


@dataclass(slots=True)
class WorkerConfig:
    pool: str
    processes: int
    """Child processes (process pool) or 1."""
    slots_per_process: int
    """Tasks one process runs at once."""
    queues: list[str]
    prefetch_multiplier: int = 1
    hostname: str = field(default_factory=lambda: f"celeriac@{socket.gethostname()}")
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    shutdown_timeout: float = 30.0
    autoscale: tuple[int, int] | None = None
    """``(max, min)`` children while autoscale is on (process pool); ``processes`` is
    then the number it starts with (``min``), as in Celery."""
    autoscale_keepalive: float = 30.0
    beat: bool = False
    """Whether beat runs beside the worker (``-B``): ``inspect scheduled`` shows its next runs."""

    @property
    def concurrency(self) -> int:
        return self.processes * self.slots_per_process


def choose_config(
    app: Celeriac,
    *,
    pool: str | None = None,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    prefetch_multiplier: int | None = None,
    hostname: str | None = None,
    autoscale: str | None = None,
) -> WorkerConfig:
    """The worker's shape from flags, then settings, then the machine.

    With no flags: the process pool with one child per core. Each child runs
    one sync task at a time; if every registered task is ``async def``, each
    child instead runs up to ``worker_async_concurrency`` coroutines.
    """
    conf = app.conf
    pool = pool or conf.worker_pool
    if pool not in POOLS:
        raise ConfigurationError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    broker = broker_class(app.broker_url)  # nothing connects
    if pool == "process" and not broker.shares_processes:
        raise ConfigurationError(
            f"the {broker.scheme}:// broker lives inside one process; "
            "run the worker with -P thread, async or solo"
        )
    cores = os.cpu_count() or 1
    wanted = concurrency or conf.worker_concurrency
    user_tasks = list(app.user_tasks.values())
    all_async = bool(user_tasks) and all(t.is_async for t in user_tasks)
    if pool == "process":
        processes, slots = wanted or cores, (conf.worker_async_concurrency if all_async else 1)
    elif pool == "thread":
        processes, slots = 1, wanted or cores * 4
    elif pool == "async":
        processes, slots = 1, wanted or conf.worker_async_concurrency
    else:
        processes, slots = 1, 1
    scale = parse_autoscale(autoscale or conf.worker_autoscale)
    if scale is not None:
        if pool != "process":
            raise ConfigurationError("autoscale sizes the process pool (-P process) only")
        processes = scale[1]
    config = WorkerConfig(
        pool=pool,
        processes=processes,
        slots_per_process=slots,
        queues=consumed_queues(app, queues),
        prefetch_multiplier=prefetch_multiplier or conf.worker_prefetch_multiplier,
        max_tasks_per_child=conf.worker_max_tasks_per_child,
        max_memory_per_child=conf.worker_max_memory_per_child,
        shutdown_timeout=conf.worker_shutdown_timeout,
        autoscale=scale,
        autoscale_keepalive=conf.worker_autoscale_keepalive,
    )
    if hostname:
        config.hostname = expand_hostname(hostname)
    return config


def consumed_queues(app: Celeriac, wanted: list[str] | None) -> list[str]:
    """The queues a worker consumes, as Celery's: ``-Q`` (a ``Broadcast`` by its name: the
    worker's own queue of it), else every queue of ``task_queues`` (or the default one)."""
    table = configured_queues(app.conf)
    if not wanted:
        return list(dict.fromkeys(queue.name for queue in table.values()))
    return [table[name].name if name in table else name for name in wanted]


def expand_hostname(name: str, host: str | None = None) -> str:
    """Celery's node-name placeholders: ``%h`` the host's name, ``%n`` its first label,
    ``%d`` the rest (the domain), ``%%`` a percent sign; a name without ``@`` is the
    host part (``-n w1`` -> ``celeriac@w1``), as Celery's ``-n`` (``celery@w1``)."""
    host = host or socket.gethostname()
    short, _, domain = host.partition(".")
    values = {"h": host, "n": short, "d": domain, "%": "%"}
    expanded = re.sub(r"%([hnd%])", lambda m: values[m.group(1)], name)
    return expanded if "@" in expanded else f"celeriac@{expanded}"
