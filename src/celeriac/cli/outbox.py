"""``celeriac outbox-relay``: publish what ``app.transaction(conn)`` committed to the outbox.

Safe to run on several hosts: on PostgreSQL one relay leads and the others
stand by, on SQLite they take turns per batch (docs/transactions.md).
"""

from __future__ import annotations

import sys

import click

from ..transactions.relay import run_relay
from .common import get_app
from .worker import configure_logging


@click.command("outbox-relay")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.pass_context
def outbox_relay(ctx: click.Context, loglevel: str) -> None:
    """Publish the outbox's committed rows (outbox_url) to the broker, in order, until
    SIGTERM or Ctrl-C."""
    app = get_app(ctx)
    app.import_modules()  # signal receivers (after_task_publish) live with the tasks
    app.finalize()
    configure_logging(app, loglevel)
    sys.exit(run_relay(app))
