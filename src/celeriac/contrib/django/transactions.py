"""Django's transaction and ``app.transaction`` together, and a Django database as a URL.

``app.transaction(connection)`` inside ``transaction.atomic()`` is what makes a
task part of the view's transaction; :func:`atomic` is the two in one block, on
the same database, so the inner one cannot be forgotten or opened on another
alias. :func:`database_url` turns a Django database into the URL celeriac's
settings take, for a PostgreSQL broker or an outbox in the application's own
database; it reads the connection at call time, so under Django's test runner
it names the test database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ...app import Celeriac

__all__ = ["atomic", "database_url"]


@contextlib.contextmanager
def atomic(
    app: Celeriac, using: str | None = None, *, savepoint: bool = True, durable: bool = False
) -> Iterator[None]:
    """``transaction.atomic(using)`` whose tasks are sent in its transaction: they run if
    and only if it commits (``app.transaction``; docs/transactions.md). Also a decorator."""
    from django.db import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        DEFAULT_DB_ALIAS,
        connections,
        transaction,
    )

    alias = using or DEFAULT_DB_ALIAS
    with (
        transaction.atomic(alias, savepoint=savepoint, durable=durable),
        app.transaction(connections[alias]),
    ):
        yield


def database_url(using: str | None = None) -> str:
    """The URL of Django's database ``using`` (default: the default one), as celeriac's
    ``broker_url``, ``result_backend`` and ``outbox_url`` take it: ``postgresql://`` or
    ``sqlite:///``."""
    from django.db import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        DEFAULT_DB_ALIAS,
        connections,
    )

    conn = connections[using or DEFAULT_DB_ALIAS]
    db = conn.settings_dict
    if conn.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    if conn.vendor != "postgresql":
        raise ConfigurationError(
            f"celeriac stores in PostgreSQL or SQLite, not in Django's {conn.vendor} database"
        )
    user = quote(db.get("USER") or "", safe="")
    if user and db.get("PASSWORD"):
        user += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{user}{'@' if user else ''}{host}{port}/{quote(db['NAME'], safe='')}"
