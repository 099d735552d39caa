"""``celeriac worker``: run a worker in the foreground, after a banner saying what it runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from ..app import Celeriac
from ..backends import backend_from_url
from ..brokers.base import Broker
from ..url_schemes import redact_url
from ..worker import WorkerConfig, choose_config, run_worker
from ..worker.middleware import Middleware, middleware_for
from .common import VERSION, get_app, run, setup_logging


@click.command()
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["process", "thread", "async", "solo"]),
    help="How tasks run (default: process, one child per core).",
)
@click.option("-c", "--concurrency", type=int, help="Child processes (process pool) or slots.")
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: celery).")
@click.option(
    "--prefetch", type=int, help="Prefetch multiplier: deliveries held per slot (default 1)."
)
@click.option("-n", "--hostname", help="Node name (default celeriac@<host>).")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.option("--max-tasks-per-child", type=int, help="Replace a child after this many tasks.")
@click.option("--max-memory-per-child", type=int, help="Replace a child past this resident KiB.")
@click.pass_context
def worker(
    ctx: click.Context,
    pool: str | None,
    concurrency: int | None,
    queues: str | None,
    prefetch: int | None,
    hostname: str | None,
    loglevel: str,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
) -> None:
    """Run a worker in the foreground (Ctrl-C: warm shutdown; twice: cold)."""
    app = get_app(ctx)
    if app.conf.worker_hijack_root_logger:
        setup_logging(loglevel)  # the root logger's handlers are replaced, as in Celery
    else:  # the app's own logging configuration stays; only celeriac's level is set
        logging.getLogger("celeriac").setLevel(loglevel.upper())
    app.import_modules()
    if max_tasks_per_child:
        app.conf.worker_max_tasks_per_child = max_tasks_per_child
    if max_memory_per_child:
        app.conf.worker_max_memory_per_child = max_memory_per_child
    config = choose_config(
        app,
        pool=pool,
        concurrency=concurrency,
        prefetch_multiplier=prefetch,
        hostname=hostname,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
    )
    middleware = middleware_for(app)  # a misplaced middleware fails here, before any fork
    broker = run(app.abroker)  # fail now, with the fix, if the broker is unreachable
    app.close()
    click.echo(banner(app, config, broker, middleware), err=True)
    sys.exit(run_worker(app, config))


def banner(
    app: Celeriac, config: WorkerConfig, broker: Broker, middleware: Sequence[Middleware]
) -> str:
    """What the worker runs: where its messages and results live, its shape, its tasks."""
    results_storage = backend_from_url(app.result_backend_url).storage  # not connected
    lines = [
        f"celeriac {VERSION} worker {config.hostname}",
        f"  app:         {app.main}",
        f"  broker:      {redact_url(app.broker_url)}{_in(broker.storage)}",
        f"  results:     {redact_url(app.result_backend_url)}{_in(results_storage)}",
        f"  pool:        {config.pool} "
        f"({config.processes} process(es) x {config.slots_per_process} slot(s))",
        f"  queues:      {', '.join(config.queues)}",
        f"  middleware:  {', '.join(type(m).__name__ for m in middleware)}",
        "  tasks:",
        *(f"    . {name}" for name in sorted(app.user_tasks)),
    ]
    return "\n".join(lines)


def _in(storage: str | None) -> str:
    """The database a broker or store names as its ``storage`` (SQLite: the absolute path)."""
    return f"  (storage {storage})" if storage else ""
