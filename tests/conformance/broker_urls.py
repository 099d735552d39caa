"""The brokers the conformance suite runs against: one entry each.

A broker that needs a server gets an entry whose ``make_url`` calls
``pytest.skip`` when the server is absent, e.g. for Redis::

    BrokerCase("redis", _redis_url_or_skip, peer="process")

and every test in ``test_broker.py`` then runs against it unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class BrokerCase:
    name: str
    make_url: Callable[[Path], str]
    """A fresh, empty broker's URL, given the test's ``tmp_path``; may skip the test."""
    peer: Literal["thread", "process"]
    """The farthest client sharing the broker: another thread's event loop, or another process."""


def _memory_url(tmp_path: Path) -> str:
    return f"memory://conformance-{uuid.uuid4().hex}"


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


BROKERS: list[BrokerCase] = [
    BrokerCase("memory", _memory_url, peer="thread"),
    BrokerCase("sqlite", _sqlite_url, peer="process"),
]
