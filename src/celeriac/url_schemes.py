"""Finding the class for a URL's scheme, shared by the broker and result-store tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from .errors import ConfigurationError

T = TypeVar("T")


def class_for_url(url: str, schemes: Mapping[str, Callable[[], T]], what: str) -> T:
    """The class registered for ``url``'s scheme; a clear error naming the URL otherwise."""
    scheme, sep, _ = url.partition("://")
    known = ", ".join(f"{s}://" for s in schemes)
    if not sep:
        raise ConfigurationError(f"{what} URL {url!r} has no scheme; use one of: {known}")
    factory = schemes.get(scheme.lower())
    if factory is None:
        raise ConfigurationError(f"unknown {what} scheme {scheme!r} in {url!r}; known: {known}")
    return factory()
