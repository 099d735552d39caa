"""``celeriac inspect <command>`` and ``celeriac control <command>``: Celery's, same output.

Arguments after the command are read as ``celery inspect``/``celery control``
read them (``control rate_limit tasks.add 10/m``, ``control revoke <id> <id>``,
``inspect query_task <id>``). Each node's reply is printed as it comes
(``->  celery@host: OK`` and the answer, indented), then ``N nodes online.``
for ``inspect``; ``--json`` prints the replies as one JSON document instead.
No reply within ``--timeout`` exits with code 69 (``EX_UNAVAILABLE``), as Celery.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pprint import pformat
from typing import Any

import click

from .common import get_app, run

__all__ = ["control", "inspect"]

EX_UNAVAILABLE = 69


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "y", "on")


@dataclass(frozen=True, slots=True)
class Signature:
    """How a command's words become its arguments (``celery.worker.control.Panel.meta``)."""

    args: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    variadic: str | None = None
    usage: str = ""


INSPECT: dict[str, Signature] = {
    "active": Signature(),
    "active_queues": Signature(),
    "clock": Signature(),
    "conf": Signature((("with_defaults", _bool),), usage="[include_defaults=False]"),
    "ping": Signature(),
    "query_task": Signature(variadic="ids", usage="[id1 [id2 [... [idN]]]]"),
    "registered": Signature(variadic="taskinfoitems", usage="[attr1 [attr2 [... [attrN]]]]"),
    "reserved": Signature(),
    "revoked": Signature(),
    "scheduled": Signature(),
    "stats": Signature(),
}

CONTROL: dict[str, Signature] = {
    "add_consumer": Signature(
        (("queue", str), ("exchange", str), ("exchange_type", str), ("routing_key", str)),
        usage="<queue> [exchange [type [routing_key]]]",
    ),
    "autoscale": Signature((("max", int), ("min", int)), usage="[max [min]]"),
    "cancel_consumer": Signature((("queue", str),), usage="<queue>"),
    "pool_grow": Signature((("n", int),), usage="[N=1]"),
    "pool_shrink": Signature((("n", int),), usage="[N=1]"),
    "rate_limit": Signature(
        (("task_name", str), ("rate_limit", str)),
        usage="<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>",
    ),
    "revoke": Signature(variadic="task_id", usage="[id1 [id2 [... [idN]]]]"),
    "revoke_by_stamped_headers": Signature(
        variadic="headers", usage="[key1=value1 [key2=value2 [... [keyN=valueN]]]]"
    ),
    "shutdown": Signature(),
    "terminate": Signature(
        (("signal", str),), variadic="task_id", usage="<signal> [id1 [id2 [... [idN]]]]"
    ),
    "time_limit": Signature(
        (("task_name", str), ("soft", float), ("hard", float)),
        usage="<task_name> <soft_secs> [hard_secs]",
    ),
}


def compile_arguments(
    kind: str, table: dict[str, Signature], method: str, words: Sequence[str]
) -> dict[str, Any]:
    """The arguments of ``method`` from the words after it, as ``celery control`` reads them."""
    if method not in table:
        names = ", ".join(sorted(table))
        raise click.UsageError(
            f"Command {method} not recognized. Available {kind} commands: {names}"
        )
    signature = table[method]
    named = list(zip(signature.args, words, strict=False))
    rest = list(words[len(named) :])
    if rest and not signature.variadic:
        raise click.UsageError(f"Command {method!r} takes arguments: {signature.usage}")
    arguments = {name: convert(word) for (name, convert), word in named}
    if signature.variadic:
        arguments[signature.variadic] = rest
    return arguments


# -- Celery's output ------------------------------------------------------------------


def _ok() -> str:
    return click.style("OK", fg="green", bold=True)


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.split("\n"))


def pretty(answer: Any) -> tuple[str, str]:
    """``(status, text)`` of one answer, as ``celery.bin.base.CLIContext.pretty``."""
    if isinstance(answer, list):
        items = "\n".join(f"{click.style('*', fg='white')} {item}" for item in answer)
        return _ok(), items or "- empty -"
    if isinstance(answer, dict) and ("ok" in answer or "error" in answer):
        if "ok" in answer:
            return _ok(), _indent(pretty(answer["ok"])[1], 4)
        return click.style("ERROR", fg="red", bold=True), _indent(pretty(answer["error"])[1], 4)
    if isinstance(answer, dict):
        return _ok(), jsonlib.dumps(answer, sort_keys=True, indent=4, default=repr)
    if isinstance(answer, str):
        return _ok(), answer
    return _ok(), pformat(answer)


def say_reply(reply: dict[str, Any]) -> None:
    """Print one node's reply as it arrives: ``->  node: OK`` and the answer."""
    node = next(iter(reply))
    status, text = pretty(reply[node])
    arrow = click.style("->", fg="white", bold=True)
    click.echo(f"{arrow}  {click.style(f'{node}: ', fg='cyan', bold=True)}{status}")
    if text:
        click.echo(_indent(text, 4))


def _no_replies() -> click.ClickException:
    error = click.ClickException("No nodes replied within time constraint")
    error.exit_code = EX_UNAVAILABLE
    return error


def _destination(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def _remote_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "-t", "--timeout", type=float, default=1.0, help="Timeout in seconds waiting for reply."
        ),
        click.option("-d", "--destination", help="Comma separated list of destination node names."),
        click.option("-j", "--json", "as_json", is_flag=True, help="Use json as output format."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@click.argument("method")
@click.argument("words", nargs=-1)
@_remote_options
@click.pass_context
def inspect(
    ctx: click.Context,
    method: str,
    words: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Ask the workers: ping, stats, active, reserved, scheduled, registered, revoked,
    query_task <id>..., active_queues, conf, clock."""
    arguments = compile_arguments("inspect", INSPECT, method, words)
    app = get_app(ctx)
    asking = app.control.inspect(
        timeout=timeout,
        destination=_destination(destination),
        callback=None if as_json else say_reply,
    )
    replies = run(lambda: asking.arequest(method, **arguments))
    if not replies:
        raise _no_replies()
    if as_json:
        click.echo(jsonlib.dumps(replies, default=repr))
        return
    count = len(replies)
    click.echo(f"\n{count} {'node' if count == 1 else 'nodes'} online.")


@click.command()
@click.argument("method")
@click.argument("words", nargs=-1)
@_remote_options
@click.pass_context
def control(
    ctx: click.Context,
    method: str,
    words: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Tell the workers: revoke <id>..., terminate <signal> <id>..., rate_limit <task> <rate>,
    time_limit <task> <soft> [hard], add_consumer <queue>, cancel_consumer <queue>,
    pool_grow [n], pool_shrink [n], autoscale [max [min]], shutdown."""
    arguments = compile_arguments("control", CONTROL, method, words)
    app = get_app(ctx)
    replies = app.control.broadcast(
        method,
        arguments,
        timeout=timeout,
        destination=_destination(destination),
        callback=None if as_json else say_reply,
        reply=True,
    )
    if not replies:
        raise _no_replies()
    if as_json:
        click.echo(jsonlib.dumps(replies, default=repr))
