"""``celeriac purge`` and ``celeriac status``: the queues as the broker sees them."""

from __future__ import annotations

import click

from ..url_schemes import redact_url
from .common import get_app, queue_names, run


@click.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, queues: str | None, force: bool) -> None:
    """Delete every waiting message of the queues."""
    app = get_app(ctx)
    names = queue_names(app, queues)
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)

    async def go() -> int:
        broker = await app.abroker()
        return sum([await broker.purge(q) for q in names])

    click.echo(f"purged {run(go)} message(s) from {', '.join(names)}")


@click.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.pass_context
def status(ctx: click.Context, queues: str | None) -> None:
    """Show the broker, the result store and the queues."""
    app = get_app(ctx)
    names = queue_names(app, queues)

    async def go() -> list[str]:
        broker = await app.abroker()
        await app.abackend()
        lines = [
            f"broker:  {redact_url(app.broker_url)} (reachable)",
            f"results: {redact_url(app.result_backend_url)} (reachable)",
        ]
        for q in names:
            s = await broker.stats(q)
            lines.append(f"queue {q}: {s.ready} ready, {s.delayed} delayed, {s.reserved} reserved")
        lines.append(f"dead letters: {len(await broker.dead_letters(None, 100000))}")
        return lines

    click.echo("\n".join(run(go)))
