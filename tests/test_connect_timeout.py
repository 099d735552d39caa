"""``broker_connection_timeout`` bounds how long connecting to a silent server takes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac._sync import run_sync
from celeriac.errors import BrokerError


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listen queue is full: a connect there hangs, unanswered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the backlog; later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    server.close()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_connecting_to_a_silent_server_gives_up_after_the_setting(
    scheme: str, silent_port: int
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}/0"
    app = Celeriac("t", broker=url, backend="memory://t", broker_connection_timeout=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(BrokerError):
            run_sync(app.abroker)
        assert 1.8 <= time.monotonic() - started < 5.0
    finally:
        app.close()
