"""URLs of brokers and result stores: the class for a scheme (the URL tables use it), and
how a URL is shown (never with its password)."""

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


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and banners)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    user, colon, _password = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}{at}{host}"
