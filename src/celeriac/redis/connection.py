"""Connections to Redis, shared by the broker and the result store: one pool per URL.

The driver is optional: this module imports ``redis`` only when a pool is
opened, and says how to install it when it is missing. Where hiredis is
installed (it comes with the ``celeriac[redis]`` extra), it packs the commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..url_schemes import redact_url
from .url import split_prefix

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

__all__ = ["open_pool", "storage_name"]


def open_pool(url: str, *, blocking: bool = False, **overrides: Any) -> tuple[ConnectionPool, str]:
    """A connection pool for ``url`` and the key prefix; nothing is connected yet.

    Connections speak RESP2 (as Celery's do; ``?protocol=3`` in the URL wins) and
    retry a command once on a connection error (a pooled socket that a Redis
    restart closed), with no backoff, so an unreachable server fails fast.
    ``blocking`` bounds the pool: callers wait for a free connection instead of
    opening one per concurrent command.
    """
    try:
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio import ConnectionPool as Pool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides redis
        raise ConfigurationError(
            f"the Redis driver is not installed (needed for {url.partition('://')[0]}:// URLs); "
            "install it with: pip install 'celeriac[redis]'"
        ) from exc
    plain, prefix = split_prefix(url)
    kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "protocol": 2, **overrides}
    try:
        if blocking:
            kwargs.setdefault("max_connections", 64)
            pool: ConnectionPool = BlockingConnectionPool.from_url(plain, **kwargs)
        else:
            pool = Pool.from_url(plain, **kwargs)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact_url(url)}: {exc}") from exc
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return pool, prefix


def _hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` packing commands with hiredis, where hiredis is installed.

    redis-py's sync connections pack with hiredis, its asyncio ones in Python:
    about 40 µs for a publish of one task, a quarter of a ``delay()``.
    """
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis comes with the redis extra
        return connection_class
    from redis.exceptions import DataError

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # None, bool, ...: redis-py's error for them
            raise DataError(f"invalid argument in Redis command {args[0]!r}: {exc}") from exc

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack_command})


def storage_name(pool: ConnectionPool) -> str:
    """The database a pool's connections reach (``celeriac.shared_storage``): server and db."""
    kwargs = pool.connection_kwargs
    return f"redis:{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
