"""``rediss://`` and ``amqps://`` end to end: the real Redis and RabbitMQ behind a TLS front.

Each scheme: a task goes through the broker and its result through the store
over TLS, verified against the test CA; a client that does not trust that CA
gets a clear error naming the URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.errors import BrokerUnavailable, CeleriacError
from celeriac.testing import worker_thread

from .services import REDIS_TEST_DB, rabbitmq_url, redis_url
from .tls_proxy import TLSProxy


@pytest.fixture
def redis_tls(tmp_path: Path) -> Iterator[TLSProxy]:
    redis_url()  # skips (fails under CI) without Redis
    with TLSProxy(6379, tmp_path) as proxy:
        yield proxy


@pytest.fixture
def rabbitmq_tls(tmp_path: Path) -> Iterator[TLSProxy]:
    rabbitmq_url()  # skips (fails under CI) without RabbitMQ
    with TLSProxy(5672, tmp_path) as proxy:
        yield proxy


def run_a_task(app: Celeriac) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with worker_thread(app, concurrency=2):
        assert add.delay(2, 3).get(timeout=30) == 5
        assert add.apply_async((1, 1), countdown=0.2).get(timeout=30) == 2


def test_rediss_carries_tasks_and_results(redis_tls: TLSProxy) -> None:
    prefix = f"celeriac-test-tls-{uuid.uuid4().hex[:8]}:"
    url = (
        f"rediss://localhost:{redis_tls.port}/{REDIS_TEST_DB}"
        f"?ssl_ca_certs={redis_tls.ca_file}&prefix={prefix}"
    )
    app = Celeriac("tls", broker=url, backend=url)
    try:
        run_a_task(app)
    finally:
        app.close()


def test_rediss_with_an_untrusted_certificate_names_the_url(redis_tls: TLSProxy) -> None:
    url = f"rediss://localhost:{redis_tls.port}/{REDIS_TEST_DB}"  # the system CAs only
    app = Celeriac("tls", broker=url, backend=url)

    @app.task
    def noop() -> None: ...

    try:
        with pytest.raises(BrokerUnavailable, match=f"localhost:{redis_tls.port}"):
            noop.delay()
    finally:
        app.close()


def test_amqps_carries_tasks_and_rpc_results(rabbitmq_tls: TLSProxy) -> None:
    prefix = f"celeriac-test-tls-{uuid.uuid4().hex[:8]}."
    url = f"amqps://guest:guest@localhost:{rabbitmq_tls.port}//?cafile={rabbitmq_tls.ca_file}"
    app = Celeriac("tls", broker=f"{url}&prefix={prefix}", backend=url)
    try:
        run_a_task(app)
    finally:
        app.close()


def test_amqps_with_an_untrusted_certificate_names_the_url(rabbitmq_tls: TLSProxy) -> None:
    url = f"amqps://guest:guest@localhost:{rabbitmq_tls.port}//"
    app = Celeriac("tls", broker=url, result_backend="memory://tls")

    @app.task
    def noop() -> None: ...

    try:
        with pytest.raises(CeleriacError, match=f"localhost:{rabbitmq_tls.port}") as raised:
            noop.delay()
        assert "guest:guest" not in str(raised.value)
    finally:
        app.close()
