"""Connections to PostgreSQL, shared by the broker and the result store: psycopg 3 async pools.

The driver is optional: this module imports ``psycopg`` only when a pool is
opened, and says how to install it when it is missing. Connections are
autocommit; a transaction is ``async with conn.transaction()``. Each
connection's ``search_path`` is the URL's schema, so statements name tables
without one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BrokerError, BrokerUnavailable, ConfigurationError
from ..shared_storage import StorageWrite
from ..url_schemes import redact_url
from .url import split_schema, start_hint

if TYPE_CHECKING:
    from psycopg import AsyncConnection, AsyncCursor
    from psycopg_pool import AsyncConnectionPool

__all__ = ["connect", "errors", "make_writes", "one_round_trip", "open_pool", "unavailable"]


def _driver(url: str) -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - exercised by hiding psycopg
        raise ConfigurationError(
            f"the PostgreSQL driver is not installed (needed for {url.partition('://')[0]}:// "
            "URLs); install it with: pip install 'celeriac[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 5.0
) -> AsyncConnectionPool:
    """An open pool for ``url`` (autocommit connections on the URL's schema, which is
    created if missing); ``BrokerUnavailable`` naming the URL and the fix, within
    ``timeout`` seconds, when the server cannot be reached."""
    _, psycopg_pool = _driver(url)
    libpq, schema = split_schema(url)
    await (await connect(url, timeout=timeout, schema=False)).close()  # fail fast, and clearly

    async def configure(conn: AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')

    pool = psycopg_pool.AsyncConnectionPool(
        libpq, min_size=min_size, max_size=max_size, configure=configure, open=False
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except Exception as exc:
        await pool.close()
        raise unavailable(url, exc) from exc
    opened: AsyncConnectionPool = pool
    return opened


async def connect(url: str, *, timeout: float = 5.0, schema: bool = True) -> AsyncConnection[Any]:
    """One connection of its own (autocommit, on the URL's schema unless ``schema`` is
    False): for ``LISTEN``, which holds its connection for as long as it listens."""
    psycopg, _ = _driver(url)
    libpq, name = split_schema(url)
    try:
        conn = await psycopg.AsyncConnection.connect(
            libpq, autocommit=True, connect_timeout=max(1, round(timeout))
        )
        if schema:
            await conn.execute(f'SET search_path TO "{name}"')
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc
    return conn  # type: ignore[no-any-return]


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """The error for a server that cannot be reached, naming the URL and the fix."""
    return BrokerUnavailable(
        f"cannot reach PostgreSQL at {redact_url(url)}: {exc}; {start_hint(url)}"
    )


async def make_writes(cur: AsyncCursor[Any], writes: Sequence[StorageWrite]) -> None:
    """A result store's writes (``celeriac.shared_storage``), in the caller's transaction."""
    for write in writes:
        await cur.executemany(write.statement, write.args)


@contextlib.asynccontextmanager
async def errors(url: str) -> AsyncIterator[None]:
    """Driver errors become celeriac's, naming the URL (a lost server: ``BrokerUnavailable``)."""
    try:
        yield
    except BrokerError:
        raise
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            raise unavailable(url, exc) from exc
        if isinstance(exc, psycopg.Error):
            raise BrokerError(f"PostgreSQL broker {redact_url(url)}: {exc}") from exc
        raise


@contextlib.asynccontextmanager
async def one_round_trip(conn: AsyncConnection[Any]) -> AsyncIterator[AsyncCursor[Any]]:
    """A transaction whose statements (results unread) reach the server in one round trip.

    ``BEGIN``, the caller's statements and ``COMMIT`` go in one pipeline with one
    Sync at its end. (psycopg's ``transaction()`` inside a pipeline syncs at
    ``BEGIN``, at ``COMMIT`` and once more on the way out: four round trips.) When a
    statement fails the server skips the rest, ``COMMIT`` too, and the error is raised
    here after a ``ROLLBACK``: nothing of the transaction is kept.
    """
    try:
        async with conn.pipeline():
            cur = conn.cursor()
            await cur.execute("BEGIN")
            yield cur
            await cur.execute("COMMIT")
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(Exception):
                await conn.rollback()
        raise
