"""``celeriac events``: the live event stream, one line per event.

By default each event is a JSON object on its own line (for ``jq`` and
scripts); ``--dump`` prints Celery's ``celery events --dump`` lines instead.
Runs until Ctrl-C, or until ``--count`` events came or ``--timeout`` seconds
passed.
"""

from __future__ import annotations

import contextlib

import click
import orjson

from ..events.dump import Dumper
from ..events.receiver import EventReceiver
from ..url_schemes import redact_url
from .common import get_app, run


@click.command()
@click.option("--dump", is_flag=True, help="Print as `celery events --dump` does.")
@click.option("--count", type=int, help="Exit after this many events.")
@click.option("--timeout", type=float, help="Exit after this many seconds.")
@click.pass_context
def events(ctx: click.Context, dump: bool, count: int | None, timeout: float | None) -> None:
    """Print the monitoring events workers and clients send (Ctrl-C: stop)."""
    app = get_app(ctx)
    dumper = Dumper() if dump else None

    async def go() -> None:
        broker = await app.abroker()
        async with EventReceiver(broker.operations()) as receiver:
            if dumper is not None:
                click.echo("-> evdump: starting capture...")
            else:
                click.echo(f"listening for events on {redact_url(app.broker_url)}", err=True)
            async for event in receiver.capture(limit=count, timeout=timeout):
                line = dumper.line(event) if dumper is not None else orjson.dumps(event).decode()
                click.echo(line)

    with contextlib.suppress(KeyboardInterrupt):
        run(go)
