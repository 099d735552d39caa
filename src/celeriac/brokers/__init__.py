"""Brokers by URL scheme. A new technology is one folder (`celeriac/<name>/`, its broker
and store beside what they share) plus one entry below; the memory broker lives here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigurationError
from ..url_schemes import class_for_url
from .base import Broker, BrokerOptions


def _memory() -> type[Broker]:
    from .memory import MemoryBroker

    return MemoryBroker


def _sqlite() -> type[Broker]:
    from ..sqlite.broker import SQLiteBroker

    return SQLiteBroker


def _postgres() -> type[Broker]:
    from ..postgres.broker import PostgresBroker

    return PostgresBroker


def _redis() -> type[Broker]:
    from ..redis.broker import RedisBroker

    return RedisBroker


def _redis_kombu() -> type[Broker]:
    from ..redis.kombu_broker import KombuRedisBroker

    return KombuRedisBroker


def _amqp() -> type[Broker]:
    from ..amqp.broker import AmqpBroker

    return AmqpBroker


SCHEMES: dict[str, Callable[[], type[Broker]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
    "redis": _redis,
    "rediss": _redis,
    "amqp": _amqp,
    "amqps": _amqp,
}


LAYOUTS: dict[tuple[str, str], Callable[[], type[Broker]]] = {
    ("redis", "kombu"): _redis_kombu,
    ("rediss", "kombu"): _redis_kombu,
}
"""Other ways a scheme's broker keeps messages, picked by ``?layout=`` in the URL or
the ``layout`` transport option (the URL wins)."""


def broker_class(url: str, transport_options: Mapping[str, Any] | None = None) -> type[Broker]:
    """The broker class for ``url``; a clear error for an unknown or malformed URL."""
    layout = parse_qs(urlsplit(url).query).get("layout", [None])[-1]
    layout = layout or (transport_options or {}).get("layout")
    if not layout:
        return class_for_url(url, SCHEMES, "broker")
    scheme = url.partition("://")[0].lower()
    factory = LAYOUTS.get((scheme, str(layout)))
    if factory is None:
        known = ", ".join(f"{s}://...?layout={name}" for s, name in LAYOUTS)
        raise ConfigurationError(
            f"unknown broker layout {layout!r} for {scheme}://; known: {known}"
        )
    return factory()


def broker_from_url(url: str, options: BrokerOptions | None = None) -> Broker:
    """The broker for ``url``; a clear error for an unknown or malformed URL."""
    transport_options = options.transport_options if options is not None else None
    return broker_class(url, transport_options)(url, options)


__all__ = ["LAYOUTS", "SCHEMES", "Broker", "BrokerOptions", "broker_class", "broker_from_url"]
