"""Which transaction, if any, the sends of this context go into (``app.transaction``).

A context variable, so a thread or an asyncio task enlists only its own sends.
The sending layer asks :func:`enlisted` on every publish; the app sets it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..protocol import Outgoing
    from ..sending import App

__all__ = ["Enlistment", "enlisted", "enlisting", "refuse_inside"]


class Enlistment(Protocol):
    """Where the messages of an open ``app.transaction(conn)`` go instead of the broker."""

    app: App

    async def enqueue(self, batch: Sequence[Outgoing]) -> None:
        """Write ``batch`` on the caller's connection, inside its open transaction."""


_current: ContextVar[Enlistment | None] = ContextVar("celeriac_transaction", default=None)


def enlisted(app: App) -> Enlistment | None:
    """The open transaction ``app``'s sends go into, or None to publish as usual."""
    enlistment = _current.get()
    return enlistment if enlistment is not None and enlistment.app is app else None


@contextlib.contextmanager
def enlisting(enlistment: Enlistment) -> Iterator[Enlistment]:
    """Send into ``enlistment`` until the block ends (blocks nest: the inner one wins)."""
    token = _current.set(enlistment)
    try:
        yield enlistment
    finally:
        _current.reset(token)


def refuse_inside(app: App, what: str, why: str) -> None:
    """Raise if a send that cannot be part of the caller's transaction is made inside one."""
    if enlisted(app) is not None:
        raise ConfigurationError(
            f"{what} cannot be sent inside app.transaction(): {why}; "
            "send it after the commit (docs/transactions.md)"
        )
