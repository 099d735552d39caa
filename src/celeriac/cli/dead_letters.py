"""``celeriac dead-letters``: list, show, requeue and purge dead letters."""

from __future__ import annotations

import time

import click
import orjson

from ..brokers.base import DeadLetter
from .common import get_app, run


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages that could not be run (malformed, unknown task, too many deliveries)."""


@dead_letters.command("list")
@click.option("-Q", "--queue", help="Only this queue.")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def list_(ctx: click.Context, queue: str | None, limit: int) -> None:
    """One line per dead letter: id, queue, task, reason."""
    app = get_app(ctx)

    async def go() -> list[str]:
        broker = await app.abroker()
        rows = []
        for d in await broker.dead_letters(queue, limit):
            task = d.message.headers.get("task", "?") if d.message else "(not a message)"
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.dead_at))
            rows.append(f"{d.id}\t{d.queue}\t{task}\t{when}\t{d.reason}")
        return rows

    lines = run(go)
    click.echo("\n".join(lines) if lines else "no dead letters")


@dead_letters.command()
@click.argument("letter_id")
@click.pass_context
def show(ctx: click.Context, letter_id: str) -> None:
    """Everything about one dead letter."""
    app = get_app(ctx)

    async def go() -> str:
        broker = await app.abroker()
        for d in await broker.dead_letters(None, 1_000_000):
            if d.id == letter_id:
                return orjson.dumps(_describe(d), option=orjson.OPT_INDENT_2, default=str).decode()
        raise click.ClickException(f"no dead letter with id {letter_id}")

    click.echo(run(go))


def _describe(d: DeadLetter) -> dict[str, object]:
    info: dict[str, object] = {
        "id": d.id,
        "queue": d.queue,
        "reason": d.reason,
        "delivery_count": d.delivery_count,
        "dead_at": d.dead_at,
    }
    if d.message is not None:
        info["headers"] = dict(d.message.headers)
        info["content_type"] = d.message.content_type
        info["body"] = d.message.body.decode("utf-8", "replace")
    else:
        info["raw"] = d.raw.decode("utf-8", "replace")
    return info


@dead_letters.command()
@click.argument("letter_ids", nargs=-1, required=True)
@click.pass_context
def requeue(ctx: click.Context, letter_ids: tuple[str, ...]) -> None:
    """Put dead letters back on their queues."""
    app = get_app(ctx)

    async def go() -> int:
        broker = await app.abroker()
        return await broker.requeue_dead_letters(list(letter_ids))

    click.echo(f"requeued {run(go)} message(s)")


@dead_letters.command("purge")
@click.option("-Q", "--queue", help="Only this queue.")
@click.pass_context
def purge_(ctx: click.Context, queue: str | None) -> None:
    """Delete dead letters for good."""
    app = get_app(ctx)

    async def go() -> int:
        broker = await app.abroker()
        return await broker.purge_dead_letters(queue)

    click.echo(f"deleted {run(go)} dead letter(s)")
