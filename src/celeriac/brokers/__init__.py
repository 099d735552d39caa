"""Brokers by URL scheme. A new broker is one module here plus one entry below."""

from __future__ import annotations

from collections.abc import Callable

from ..url_schemes import class_for_url
from .base import Broker, BrokerOptions


def _memory() -> type[Broker]:
    from .memory import MemoryBroker

    return MemoryBroker


def _sqlite() -> type[Broker]:
    from .sqlite import SQLiteBroker

    return SQLiteBroker


def _redis() -> type[Broker]:
    from .redis import RedisBroker

    return RedisBroker


def _amqp() -> type[Broker]:
    from .amqp import AmqpBroker

    return AmqpBroker


SCHEMES: dict[str, Callable[[], type[Broker]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
    "amqp": _amqp,
    "amqps": _amqp,
}


def broker_from_url(url: str, options: BrokerOptions | None = None) -> Broker:
    """The broker for ``url``; a clear error for an unknown or malformed URL."""
    return class_for_url(url, SCHEMES, "broker")(url, options)


__all__ = ["SCHEMES", "Broker", "BrokerOptions", "broker_from_url"]
