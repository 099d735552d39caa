"""``celeriac worker``: run a worker in the foreground, after a banner saying what it runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from .. import signals
from ..app import Celeriac
from ..backends import backend_from_url
from ..beat.process import start_embedded
from ..brokers.base import Broker
from ..embedded import stop_embedded
from ..transactions.relay import start_embedded_relay
from ..url_schemes import redact_url
from ..worker import WorkerConfig, choose_config, run_worker
from ..worker.middleware import Middleware, middleware_for
from .common import LOG_FORMAT, VERSION, get_app, run, setup_logging


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
@click.option(
    "-n", "--hostname", help="Node name (default celeriac@<host>; %h, %n, %d as in Celery)."
)
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.option("--max-tasks-per-child", type=int, help="Replace a child after this many tasks.")
@click.option("--max-memory-per-child", type=int, help="Replace a child past this resident KiB.")
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    help="Grow the process pool up to MAX children under load, shrink it to MIN when idle.",
)
@click.option(
    "-E", "--task-events", is_flag=True, help="Send task events (worker_send_task_events)."
)
@click.option(
    "-B", "--beat", is_flag=True, help="Run beat beside the worker (safe on every worker)."
)
@click.option(
    "--outbox-relay",
    is_flag=True,
    help="Run the outbox relay beside the worker (outbox_url; safe on every worker).",
)
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
    autoscale: str | None,
    task_events: bool,
    beat: bool,
    outbox_relay: bool,
) -> None:
    """Run a worker in the foreground (Ctrl-C: warm shutdown; twice: cold)."""
    app = get_app(ctx)
    app.import_modules()
    app.finalize()
    if max_tasks_per_child:
        app.conf.worker_max_tasks_per_child = max_tasks_per_child
    if max_memory_per_child:
        app.conf.worker_max_memory_per_child = max_memory_per_child
    if task_events:
        app.conf.worker_send_task_events = True
    config = choose_config(
        app,
        pool=pool,
        concurrency=concurrency,
        prefetch_multiplier=prefetch,
        hostname=hostname,
        autoscale=autoscale,
        queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
    )
    config.beat = beat
    # Celery's order: celeryd_init, logging, celeryd_after_setup, the banner.
    # ``instance`` is the worker's shape, which a receiver may still change.
    signals.celeryd_init.send(
        sender=config.hostname, instance=config, conf=app.conf, options=dict(ctx.params)
    )
    configure_logging(app, loglevel)
    middleware = middleware_for(app)  # a misplaced middleware fails here, before any fork
    broker = run(app.abroker)  # fail now, with the fix, if the broker is unreachable
    app.close()
    signals.celeryd_after_setup.send(sender=config.hostname, instance=config, conf=app.conf)
    click.echo(banner(app, config, broker, middleware), err=True)
    beat_pid = start_embedded(app) if beat else None
    relay_pid = start_embedded_relay(app) if outbox_relay else None
    try:
        code = run_worker(app, config)
    finally:
        if relay_pid is not None:
            stop_embedded(relay_pid)
        if beat_pid is not None:
            stop_embedded(beat_pid)
    sys.exit(code)


def configure_logging(app: Celeriac, loglevel: str) -> None:
    """Celery's rule: when a ``setup_logging`` receiver is connected it configures
    logging and celeriac leaves it alone (what such a receiver raises stops the
    worker); otherwise celeriac configures it and then tells ``after_setup_logger``
    and ``after_setup_task_logger`` receivers, which may add to it."""
    level = logging.getLevelName(loglevel.upper())
    options: dict[str, object] = {
        "loglevel": level,
        "logfile": None,
        "format": LOG_FORMAT,
        "colorize": False,
    }
    if signals.setup_logging.receivers:
        for _, response in signals.setup_logging.send(sender=None, **options):
            if isinstance(response, Exception):
                raise response
        return
    if app.conf.worker_hijack_root_logger:
        setup_logging(loglevel)  # the root logger's handlers are replaced, as in Celery
    else:  # the app's own logging configuration stays; only celeriac's level is set
        logging.getLogger("celeriac").setLevel(level)
    signals.after_setup_logger.send(sender=None, logger=logging.getLogger(), **options)
    signals.after_setup_task_logger.send(
        sender=None, logger=logging.getLogger("celeriac.task"), **options
    )


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
        f"({config.processes} process(es) x {config.slots_per_process} slot(s))"
        + (f", autoscale {config.autoscale[0]},{config.autoscale[1]}" if config.autoscale else ""),
        f"  queues:      {', '.join(config.queues)}",
        f"  middleware:  {', '.join(type(m).__name__ for m in middleware)}",
        "  tasks:",
        *(f"    . {name}" for name in sorted(app.user_tasks)),
    ]
    return "\n".join(lines)


def _in(storage: str | None) -> str:
    """The database a broker or store names as its ``storage`` (SQLite: the absolute path)."""
    return f"  (storage {storage})" if storage else ""
