"""What the conformance suites run against: one entry per broker, one per result store.

A broker or store that needs a server gets an entry whose ``make_url`` calls
``pytest.skip`` when the server is absent (and fails under ``CI=true``), e.g.::

    Target("redis", redis_url_or_skip, peer="process")

and every test in ``test_broker.py`` / ``test_backend.py`` runs against it unchanged.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from celeriac.brokers import Broker, broker_from_url

from ..services import postgres_url, rabbitmq_url, redis_url


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    make_url: Callable[[Path], str]
    """A fresh, empty broker's or store's URL, given the test's ``tmp_path``; may skip."""
    peer: Literal["thread", "process"]
    """The farthest client sharing it: another thread's event loop, or another process."""


def _memory_url(tmp_path: Path) -> str:
    return f"memory://conformance-{uuid.uuid4().hex}"


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conformance.db'}"


def _redis_url(tmp_path: Path) -> str:
    """Redis db 15 with a key prefix of this test's own; skips (fails under CI) without Redis."""
    return redis_url()


def _redis_kombu_url(tmp_path: Path) -> str:
    """As ``_redis_url``, on kombu's layout, with a 1 s visibility timeout (see LEASE)."""
    return redis_url() + "&layout=kombu&visibility_timeout=1"


def _amqp_url(tmp_path: Path) -> str:
    """RabbitMQ, names prefixed for this test alone; skips (fails under CI) without it."""
    return rabbitmq_url()


def _rpc_url(tmp_path: Path) -> str:
    """RabbitMQ reply queues, results kept per URL; skips (fails under CI) without RabbitMQ."""
    return rabbitmq_url(scheme="rpc")


def _postgres_url(tmp_path: Path) -> str:
    """PostgreSQL's ``test`` database, a schema of this test's own; skips (fails under CI)
    without the server."""
    return postgres_url()


BROKERS: list[Target] = [
    Target("memory", _memory_url, peer="thread"),
    Target("sqlite", _sqlite_url, peer="process"),
    Target("redis", _redis_url, peer="process"),
    Target("redis-kombu", _redis_kombu_url, peer="process"),
    Target("amqp", _amqp_url, peer="process"),
    Target("postgres", _postgres_url, peer="process"),
]

STORES: list[Target] = [
    Target("memory", _memory_url, peer="thread"),
    Target("sqlite", _sqlite_url, peer="process"),
    Target("redis", _redis_url, peer="process"),
    Target("postgres", _postgres_url, peer="process"),
    # rpc:// replies reach clients connected when the result is stored; a process
    # that connects later cannot get() it, as in Celery: peers are threads only.
    Target("rpc", _rpc_url, peer="thread"),
]


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Broker]:
    """A broker on ``url``, connected, closed on the way out."""
    broker = broker_from_url(url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()
