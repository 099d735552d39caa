"""``celeriac call`` and ``celeriac result``: send a task, read a result."""

from __future__ import annotations

from typing import Any

import click
import orjson

from ..result import AsyncResult
from .common import get_app, run, to_json


@click.command()
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float, help="Run no sooner than this many seconds from now.")
@click.option("--queue", help="Queue to send to.")
@click.option("--priority", type=int, help="0-9, 9 highest.")
@click.option(
    "--wait", "wait_timeout", type=float, help="Wait up to this many seconds and print the result."
)
@click.pass_context
def call(
    ctx: click.Context,
    name: str,
    args_json: str,
    kwargs_json: str,
    countdown: float | None,
    queue: str | None,
    priority: int | None,
    wait_timeout: float | None,
) -> None:
    """Send task NAME; print its id (or its result with --wait)."""
    app = get_app(ctx)
    try:
        args, kwargs = orjson.loads(args_json), orjson.loads(kwargs_json)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    options = {
        k: v
        for k, v in {"countdown": countdown, "queue": queue, "priority": priority}.items()
        if v is not None
    }
    sent = app.send_task(name, args, kwargs, **options)
    if wait_timeout is None:
        click.echo(sent.id)
    else:
        click.echo(to_json(sent.get(timeout=wait_timeout)))


@click.command()
@click.argument("task_id")
@click.option("--timeout", type=float, help="Wait up to this many seconds for it to be ready.")
@click.pass_context
def result(ctx: click.Context, task_id: str, timeout: float | None) -> None:
    """Print the state and result of TASK_ID."""
    app = get_app(ctx)
    res: AsyncResult[Any] = AsyncResult(task_id, app)
    if timeout is not None:
        res.get(timeout=timeout, propagate=False)
    meta = run(res.ameta)
    if meta is None:
        click.echo(f"{task_id}: unknown (the result store has no record of this id)")
        return
    click.echo(f"{task_id}: {meta.status}")
    if meta.result is not None:
        click.echo(to_json(meta.result))
    if meta.traceback:
        click.echo(meta.traceback.rstrip())
