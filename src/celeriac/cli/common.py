"""What every ``celeriac`` command shares: finding the app, running a coroutine, printing."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import orjson

from .._sync import run_sync
from .._version import __version__
from ..app import Celeriac
from ..errors import ConfigurationError

T = TypeVar("T")

VERSION = __version__
"""The one place the CLI reads the package's version."""

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


def get_app(ctx: click.Context) -> Celeriac:
    """The app named by ``-A``, with the ``-b`` / ``--result-backend`` overrides applied."""
    app_ref = ctx.obj.get("app_ref")
    if not app_ref:
        raise click.UsageError("which app? pass -A MODULE (for example: celeriac -A proj worker)")
    app = load_app(app_ref)
    overrides = {k: v for k, v in ctx.obj["overrides"].items() if v}
    if overrides:
        app.conf.update(overrides)
    return app


def run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async call from a command (the app's sync facade)."""
    return run_sync(factory)


def queue_names(app: Celeriac, queues: str | None) -> list[str]:
    """``-Q a,b`` as a list; the app's default queue when not given."""
    return [q.strip() for q in (queues or app.conf.task_default_queue).split(",") if q.strip()]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)


def to_json(value: Any) -> str:
    """``value`` as indented JSON, or its ``repr`` when JSON cannot hold it."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return repr(value)
