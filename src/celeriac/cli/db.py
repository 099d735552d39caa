"""``celeriac db migrate`` and ``celeriac db sql``: celeriac's tables in PostgreSQL.

The broker and the result store create their tables on first connect anyway;
these are for a DBA who would rather apply or review the DDL ahead of time
(``celeriac.postgres.schema`` holds all of it). ``db sql --outbox`` prints the
outbox table of ``app.transaction()`` for the application's database
(``celeriac.transactions.outbox``), PostgreSQL or SQLite.
"""

from __future__ import annotations

import click

from ..postgres.url import SCHEMES
from ..url_schemes import redact_url
from .common import get_app, run


@click.group()
def db() -> None:
    """celeriac's tables in PostgreSQL."""


@db.command()
@click.option("--url", help="postgresql:// URL (default: the app's broker or result store).")
@click.pass_context
def migrate(ctx: click.Context, url: str | None) -> None:
    """Apply the migrations the database lacks, and say which."""
    target = url or _app_url(ctx)

    async def go() -> list[str]:
        from ..postgres.connection import errors, open_pool
        from ..postgres.schema import migrate

        pool = await open_pool(target, max_size=1)
        try:
            async with errors(target), pool.connection() as conn:
                return [f"applied version {m.version}: {m.name}" for m in await migrate(conn)]
        finally:
            await pool.close()

    lines = run(go)
    click.echo("\n".join(lines) if lines else f"{redact_url(target)} is up to date")


@db.command()
@click.option("--outbox", is_flag=True, help="The outbox table's DDL instead (outbox_url).")
@click.option("--url", help="With --outbox: the database (default: the app's outbox_url).")
@click.pass_context
def sql(ctx: click.Context, outbox: bool, url: str | None) -> None:
    """Print every migration's DDL, in order (--outbox: the outbox table's), to review or
    run by hand."""
    if outbox:
        from ..transactions.outbox import ddl

        click.echo(ddl(url or _outbox_url(ctx)), nl=False)
        return
    if url:
        raise click.UsageError("--url goes with --outbox; the migrations are the same anywhere")
    from ..postgres.schema import all_sql

    click.echo(all_sql(), nl=False)


def _outbox_url(ctx: click.Context) -> str:
    outbox_url = get_app(ctx).conf.outbox_url
    if not outbox_url:
        raise click.UsageError(
            "the app sets no outbox_url: pass --url postgresql://... or sqlite:///..."
        )
    return outbox_url


def _app_url(ctx: click.Context) -> str:
    """The app's broker URL, or else its result store's, if either is PostgreSQL."""
    app = get_app(ctx)
    for candidate in (app.broker_url, app.result_backend_url):
        if candidate.partition("://")[0].lower() in SCHEMES:
            return candidate
    raise click.UsageError(
        "neither the app's broker nor its result store is PostgreSQL: pass --url postgresql://..."
    )
