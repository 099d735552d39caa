"""Brokers by URL scheme. A new technology is one folder (`celeriac/<name>/`, its broker
and store beside what they share) plus one entry below; the memory broker lives here."""

from __future__ import annotations

from collections.abc import Callable

from ..url_schemes import class_for_url
from .base import Broker, BrokerOptions


def _memory() -> type[Broker]:
    from .memory import MemoryBroker

    return MemoryBroker


def _sqlite() -> type[Broker]:
    from ..sqlite.broker import SQLiteBroker

    return SQLiteBroker


def _redis() -> type[Broker]:
    from ..redis.broker import RedisBroker

    return RedisBroker


def _amqp() -> type[Broker]:
    from ..amqp.broker import AmqpBroker

    return AmqpBroker


SCHEMES: dict[str, Callable[[], type[Broker]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "amqp": _amqp,
    "amqps": _amqp,
}


def broker_class(url: str) -> type[Broker]:
    """The broker class for ``url``; a clear error for an unknown or malformed URL."""
    return class_for_url(url, SCHEMES, "broker")


def broker_from_url(url: str, options: BrokerOptions | None = None) -> Broker:
    """The broker for ``url``; a clear error for an unknown or malformed URL."""
    return broker_class(url)(url, options)


__all__ = ["SCHEMES", "Broker", "BrokerOptions", "broker_class", "broker_from_url"]
