"""Which way ``app.transaction(conn)`` writes messages: the broker's own table or the outbox."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..sending import App
from .current import Enlistment

__all__ = ["enlistment_for"]


def enlistment_for(app: App, conn: Any) -> Enlistment:
    """The outbox when ``outbox_url`` is set; else the PostgreSQL broker's table; else an
    error saying what to set."""
    conf = app.conf
    if conf.outbox_url:
        from .outbox import OutboxEnlistment

        return OutboxEnlistment(app, conn, conf.outbox_url)  # a bad URL fails here, at ``with``
    scheme = (conf.broker_url or "").partition("://")[0]
    if scheme in ("postgresql", "postgres"):
        from .direct import DirectEnlistment

        return DirectEnlistment(app, conn)
    raise ConfigurationError(
        "app.transaction() needs the PostgreSQL broker (broker_url=postgresql://...) or an "
        f"outbox for the {scheme or 'default sqlite'}:// broker: set outbox_url to the "
        "application's database (postgresql://... or sqlite:///...) and run "
        "celeriac outbox-relay (docs/transactions.md)"
    )
