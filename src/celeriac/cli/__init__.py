"""The ``celeriac`` command: the group here, each group of subcommands in its module.

::

    common.py        finding the app (-A), running a coroutine, printing JSON
    worker.py        celeriac worker (and its banner; -B runs beat beside it)
    beat.py          celeriac beat (and --dry-run)
    tasks.py         celeriac call, celeriac result
    queues.py        celeriac purge, celeriac status
    dead_letters.py  celeriac dead-letters list | show | requeue | purge
    events.py        celeriac events (the live event stream)
    control.py       celeriac inspect <command>, celeriac control <command>
    db.py            celeriac db migrate | sql (PostgreSQL's tables; sql --outbox)
    outbox.py        celeriac outbox-relay (publishes app.transaction()'s outbox)

The subcommand modules import ``common``, never this module, so none of them
import each other in a circle.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import CeleriacError
from . import beat, control, db, dead_letters, events, outbox, queues, tasks, worker
from .common import VERSION, get_app, load_app

__all__ = ["get_app", "load_app", "main"]


class AppGroup(click.Group):
    """Turns celeriac's own errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CeleriacError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=AppGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_ref",
    metavar="MODULE[:ATTR]",
    envvar="CELERIAC_APP",
    help="The module that defines the app (e.g. proj, proj.tasks:app).",
)
@click.option("-b", "--broker", help="Broker URL (overrides the app's broker_url).")
@click.option("--result-backend", help="Result store URL (overrides result_backend).")
@click.version_option(VERSION, "--version", prog_name="celeriac")
@click.pass_context
def main(
    ctx: click.Context, app_ref: str | None, broker: str | None, result_backend: str | None
) -> None:
    """celeriac: a distributed task queue with Celery's API.

    \b
    Start a worker:     celeriac -A proj worker
    Send a task:        celeriac -A proj call proj.tasks.add --args '[2, 2]'
    Read a result:      celeriac -A proj result <task-id>
    """
    ctx.ensure_object(dict)
    ctx.obj["app_ref"] = app_ref
    ctx.obj["overrides"] = {"broker_url": broker, "result_backend": result_backend}


for _command in (
    worker.worker,
    beat.beat,
    tasks.call,
    tasks.result,
    queues.purge,
    queues.status,
    dead_letters.dead_letters,
    events.events,
    control.inspect,
    control.control,
    db.db,
    outbox.outbox_relay,
):
    main.add_command(_command)
