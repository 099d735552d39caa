"""Writes a result store hands to a broker that keeps its data in the same database.

When the broker and the result store are one SQLite file or one Redis database
(the default SQLite set-up is both in ``celeriac.db``), the PENDING markers
that ``delay()`` records need not be a second transaction or round trip: the
store describes them in the storage's own language and the broker makes them
with the publish, in the same transaction (SQLite) or pipeline (Redis).

Each side names its database in ``storage``; the app pairs them only when the
names are equal, so neither side knows the other's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["StorageWrite", "same_storage"]


@dataclass(frozen=True, slots=True)
class StorageWrite:
    """One write in the storage's own terms.

    SQLite: an SQL statement and the rows for ``executemany``. Redis: a command
    name and its arguments.
    """

    statement: str
    args: Sequence[Any]


def same_storage(broker: str | None, store: str | None) -> bool:
    """Whether a broker and a result store with these ``storage`` names share a database."""
    return broker is not None and broker == store
