"""``celeriac beat``: send the app's periodic tasks while this beat leads (any number may run).

``--dry-run`` sends nothing: it prints who leads, each entry's last run as
the broker's storage records it, and its next run times.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from ..app import Celeriac
from ..beat.entries import entries_from
from ..beat.plan import next_ticks
from ..beat.process import run_beat
from ..schedules.base import app_zone
from .common import get_app, run
from .worker import configure_logging

DRY_RUN_TICKS = 3


@click.command()
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.option("-n", "--name", help="This beat's name as a lease holder (default: host.pid.random).")
@click.option(
    "--dry-run", is_flag=True, help="Print the leader and the next run times; send nothing."
)
@click.option(
    "--max-interval", type=float, help="Longest sleep between steps (beat_max_loop_interval)."
)
@click.option(
    "-s",
    "--schedule",
    "schedule_file",
    metavar="FILE",
    help="Celery's schedule file: accepted and unused (beat's state lives in the broker).",
)
@click.pass_context
def beat(
    ctx: click.Context,
    loglevel: str,
    name: str | None,
    dry_run: bool,
    max_interval: float | None,
    schedule_file: str | None,
) -> None:
    """Send the periodic tasks of beat_schedule (safe to run on every host: one leads)."""
    if schedule_file:
        click.echo(f"-s {schedule_file}: unused, beat keeps its state in the broker", err=True)
    app = get_app(ctx)
    app.import_modules()
    app.finalize()
    if max_interval is not None:
        app.conf.beat_max_loop_interval = max_interval
    if dry_run:
        click.echo(run(lambda: describe(app)))
        return
    configure_logging(app, loglevel)
    sys.exit(run_beat(app, name=name))


async def describe(app: Celeriac) -> str:
    """The leader, and each entry's schedule, last run and next runs (in the app's zone)."""
    entries = entries_from(app.conf.beat_schedule)
    store = (await app.abroker()).beat_store()
    holder, runs = await store.holder(), await store.last_runs()
    await app.aclose()
    zone = app_zone(app)
    now = datetime.now(UTC).timestamp()

    def when(tick: float) -> str:
        text = datetime.fromtimestamp(tick, zone).isoformat(sep=" ", timespec="seconds")
        return text + (" (due)" if tick <= now else "")

    lines = [
        f"leader: {holder[0]} (lease until {when(holder[1])})" if holder else "leader: none",
        f"entries: {len(entries)} (times in {zone})",
    ]
    for entry in entries:
        last = runs.get(entry.name)
        upcoming = next_ticks(entry.schedule, now if last is None else last, zone, DRY_RUN_TICKS)
        lines += [
            f"  {entry.name}: {entry.task} {entry.schedule!r}",
            f"    last run: {'never' if last is None else when(last).removesuffix(' (due)')}",
            f"    next:     {', '.join(when(t) for t in upcoming)}",
        ]
    return "\n".join(lines)
