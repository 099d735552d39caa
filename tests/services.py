"""Servers the tests need (Redis now; RabbitMQ and PostgreSQL later): find or skip.

A test that needs a server calls :func:`require_server` (or a wrapper such as
:func:`redis_url`). When the server is not listening it skips with the
command that starts it; under CI (``CI=true``) it fails instead, so a CI job
whose service did not come up cannot pass by skipping everything.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_TEST_DB = 15
"""The database tests use, away from the default 0."""
REDIS_START = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)
_TEST_PREFIX = f"celeriac-test-{os.getpid()}-"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_server(name: str, host: str, port: int, start: str) -> None:
    """Skip the calling test unless ``name`` listens on ``host:port``; under CI, fail."""
    if reachable(host, port):
        return
    message = f"{name} not reachable at {host}:{port}; start it with: {start}"
    if under_ci():
        pytest.fail(f"{message} (CI=true: a missing server fails, never skips)", pytrace=False)
    pytest.skip(message)


def redis_url(*, prefixed: bool = True, db: int = REDIS_TEST_DB) -> str:
    """The test Redis's URL (skips or fails as above), with a key prefix unique to the call.

    Keys under the prefixes of this process are deleted when it exits.
    """
    require_server("Redis", REDIS_HOST, REDIS_PORT, REDIS_START)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    if not prefixed:
        return url
    _cleanup.add(db)
    return f"{url}?prefix={_TEST_PREFIX}{uuid.uuid4().hex[:12]}:"


_cleanup: set[int] = set()


@atexit.register
def _delete_test_keys() -> None:
    if not _cleanup or not reachable(REDIS_HOST, REDIS_PORT):
        return
    import redis

    for db in _cleanup:
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
        try:
            keys = list(client.scan_iter(match=f"{_TEST_PREFIX}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        except redis.RedisError:
            pass
        finally:
            client.close()


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
RABBITMQ_START = "rabbitmq-server -detached && rabbitmqctl await_startup"
RABBITMQ_TEST_PREFIX = f"celeriac-test-{os.getpid()}-"


def rabbitmq_url(*, prefixed: bool = True, scheme: str = "amqp", query: str = "") -> str:
    """The test RabbitMQ's URL (skips or fails as above), names prefixed uniquely per call.

    Queues and exchanges under the prefixes of this process are deleted when it exits.
    """
    require_server("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_START)
    url = f"{scheme}://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
    params = [query] if query else []
    if prefixed:
        _rabbit_cleanup.append(True)
        params.insert(0, f"prefix={RABBITMQ_TEST_PREFIX}{uuid.uuid4().hex[:12]}.")
    return url + ("?" + "&".join(params) if params else "")


POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
POSTGRES_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
POSTGRES_TEST_SCHEMA = f"celeriac_test_{os.getpid()}_"
_postgres_schemas: list[str] = []


def postgres_url(*, schema: bool = True) -> str:
    """The test PostgreSQL's URL (database ``test``; skips or fails as above), with a schema
    unique to the call; the schemas of this process are dropped when it exits."""
    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT, POSTGRES_START)
    url = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
    if not schema:
        return url
    name = f"{POSTGRES_TEST_SCHEMA}{uuid.uuid4().hex[:12]}"
    _postgres_schemas.append(name)
    return f"{url}?schema={name}"


@atexit.register
def _drop_test_schemas() -> None:
    if not _postgres_schemas or not reachable(POSTGRES_HOST, POSTGRES_PORT):
        return
    import psycopg

    with psycopg.connect(postgres_url(schema=False), autocommit=True) as conn:
        for name in _postgres_schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ...`` on the test server; its output."""
    import subprocess

    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


@contextlib.contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A fresh RabbitMQ vhost ``name`` (skips or fails as above), deleted afterwards; its URL.

    For tests of Celery's fixed names (``celeryev``, ``celery.pidbox``): no other
    test's worker or listener shares them there.
    """
    import subprocess

    rabbitmq_url()
    with contextlib.suppress(subprocess.CalledProcessError):
        rabbitmqctl("delete_vhost", name)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


_rabbit_cleanup: list[bool] = []


@atexit.register
def _delete_test_rabbitmq_names() -> None:
    if not _rabbit_cleanup or not reachable(RABBITMQ_HOST, RABBITMQ_PORT):
        return
    import asyncio
    import subprocess

    listed: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        try:
            out = subprocess.run(
                ["rabbitmqctl", "-q", f"list_{kind}", "name"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return
        listed[kind] = [n for n in out.split() if n.startswith(RABBITMQ_TEST_PREFIX)]

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect(f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/")
        async with connection:
            channel = await connection.channel()
            for name in listed["queues"]:
                await channel.queue_delete(name)
            for name in listed["exchanges"]:
                await channel.exchange_delete(name)

    with contextlib.suppress(Exception):  # best effort: names are unique per run anyway
        asyncio.run(delete())
