"""The ``celeriac`` command."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import orjson

from . import __version__
from ._sync import run_sync
from .app import Celeriac
from .brokers.base import redact_url
from .errors import CeleriacError, ConfigurationError
from .result import AsyncResult

T = TypeVar("T")

LOG_FORMAT = "[%(asctime)s %(levelname)s/%(process)d] %(name)s: %(message)s"


def load_app(ref: str) -> Celeriac:
    """``module``, ``module:attr`` or ``package`` (tries ``package.celery``), as Celery does."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import {module_name!r}: {exc}. Run celeriac from the directory that "
                "contains it, or add that directory to PYTHONPATH."
            ) from None
        raise
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, Celeriac):
            raise ConfigurationError(f"{module_name}:{attr} is not a Celeriac app")
        return found
    for name in ("app", "celery"):
        found = getattr(module, name, None)
        if isinstance(found, Celeriac):
            return found
    apps = [v for v in vars(module).values() if isinstance(v, Celeriac)]
    if len(apps) == 1:
        return apps[0]
    try:
        return load_app(f"{module_name}.celery")
    except (ConfigurationError, ModuleNotFoundError):
        pass
    raise ConfigurationError(
        f"module {module_name!r} has no celeriac app: "
        f"name it `app`, or pass -A {module_name}:<name>"
    )


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return run_sync(factory)


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
@click.version_option(__version__, "--version", prog_name="celeriac")
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


def get_app(ctx: click.Context) -> Celeriac:
    app_ref = ctx.obj.get("app_ref")
    if not app_ref:
        raise click.UsageError("which app? pass -A MODULE (for example: celeriac -A proj worker)")
    app = load_app(app_ref)
    overrides = {k: v for k, v in ctx.obj["overrides"].items() if v}
    if overrides:
        app.conf.update(overrides)
    return app


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)


@main.command()
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
    from .worker import choose_config, run_worker

    setup_logging(loglevel)
    app = get_app(ctx)
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
    _run(app.abroker)  # fail now, with the fix, if the broker is unreachable
    app.close()
    click.echo(banner(app, config), err=True)
    sys.exit(run_worker(app, config))


def banner(app: Celeriac, config: Any) -> str:
    tasks = sorted(app.user_tasks)
    lines = [
        f"celeriac {__version__} worker {config.hostname}",
        f"  app:         {app.main}",
        f"  broker:      {redact_url(app.broker_url)}{_sqlite_path(app.broker_url)}",
        f"  results:     {redact_url(app.result_backend_url)}"
        f"{_sqlite_path(app.result_backend_url)}",
        f"  pool:        {config.pool} "
        f"({config.processes} process(es) x {config.slots_per_process} slot(s))",
        f"  queues:      {', '.join(config.queues)}",
        "  tasks:",
        *(f"    . {name}" for name in tasks),
    ]
    return "\n".join(lines)


def _sqlite_path(url: str) -> str:
    if not url.startswith("sqlite://"):
        return ""
    from .sqlite_url import parse_sqlite_url

    return f"  (file {parse_sqlite_url(url)[0]})"


@main.command()
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
    result = app.send_task(name, args, kwargs, **options)
    if wait_timeout is None:
        click.echo(result.id)
    else:
        click.echo(_json(result.get(timeout=wait_timeout)))


@main.command()
@click.argument("task_id")
@click.option("--timeout", type=float, help="Wait up to this many seconds for it to be ready.")
@click.pass_context
def result(ctx: click.Context, task_id: str, timeout: float | None) -> None:
    """Print the state and result of TASK_ID."""
    app = get_app(ctx)
    res: AsyncResult[Any] = AsyncResult(task_id, app)
    if timeout is not None:
        res.get(timeout=timeout, propagate=False)
    meta = _run(res.ameta)
    if meta is None:
        click.echo(f"{task_id}: unknown (the result store has no record of this id)")
        return
    click.echo(f"{task_id}: {meta.status}")
    if meta.result is not None:
        click.echo(_json(meta.result))
    if meta.traceback:
        click.echo(meta.traceback.rstrip())


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, queues: str | None, force: bool) -> None:
    """Delete every waiting message of the queues."""
    app = get_app(ctx)
    names = [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)

    async def go() -> int:
        broker = await app.abroker()
        return sum([await broker.purge(q) for q in names])

    click.echo(f"purged {_run(go)} message(s) from {', '.join(names)}")


@main.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.pass_context
def status(ctx: click.Context, queues: str | None) -> None:
    """Show the broker, the result store and the queues."""
    app = get_app(ctx)
    names = [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]

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

    click.echo("\n".join(_run(go)))


from .cli_dead_letters import dead_letters  # noqa: E402 - registers on `main`

main.add_command(dead_letters)


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return repr(value)


if __name__ == "__main__":
    main()
