"""Result stores by URL scheme. A new technology is one folder (`celeriac/<name>/`) plus
one entry below; the memory store lives here."""

from __future__ import annotations

from collections.abc import Callable

from ..url_schemes import class_for_url
from .base import BackendOptions, ResultBackend


def _memory() -> type[ResultBackend]:
    from .memory import MemoryBackend

    return MemoryBackend


def _sqlite() -> type[ResultBackend]:
    from ..sqlite.store import SQLiteBackend

    return SQLiteBackend


def _redis() -> type[ResultBackend]:
    from ..redis.store import RedisBackend

    return RedisBackend


def _postgres() -> type[ResultBackend]:
    from ..postgres.store import PostgresBackend

    return PostgresBackend


def _rpc() -> type[ResultBackend]:
    from ..amqp.rpc import RpcBackend

    return RpcBackend


SCHEMES: dict[str, Callable[[], type[ResultBackend]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "postgresql": _postgres,
    "postgres": _postgres,
    "rpc": _rpc,
    "amqp": _rpc,  # a RabbitMQ URL as result store: replies over it, as rpc://
    "amqps": _rpc,
}


def backend_class(url: str) -> type[ResultBackend]:
    """The result store class for ``url``; a clear error for an unknown or malformed URL."""
    return class_for_url(url, SCHEMES, "result backend")


def backend_from_url(url: str, options: BackendOptions | None = None) -> ResultBackend:
    """The result store for ``url``; a clear error for an unknown or malformed URL."""
    return backend_class(url)(url, options)


__all__ = ["SCHEMES", "BackendOptions", "ResultBackend", "backend_class", "backend_from_url"]
