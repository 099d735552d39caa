"""Result stores by URL scheme. A new store is one module here plus one entry below."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigurationError
from .base import BackendOptions, ResultBackend


def _memory() -> type[ResultBackend]:
    from .memory import MemoryBackend

    return MemoryBackend


def _sqlite() -> type[ResultBackend]:
    from .sqlite import SQLiteBackend

    return SQLiteBackend


SCHEMES: dict[str, Callable[[], type[ResultBackend]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


def backend_from_url(url: str, options: BackendOptions | None = None) -> ResultBackend:
    """The result store for ``url``; a clear error for an unknown or malformed URL."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"result backend URL {url!r} has no scheme; use one of: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    factory = SCHEMES.get(scheme.lower())
    if factory is None:
        raise ConfigurationError(
            f"unknown result backend scheme {scheme!r} in {url!r}; known: "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    return factory()(url, options)


__all__ = ["SCHEMES", "BackendOptions", "ResultBackend", "backend_from_url"]
