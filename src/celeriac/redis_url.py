"""``redis://`` and ``rediss://`` URLs, shared by the Redis broker and result store.

redis-py's own URL syntax (``redis://[[user]:password@]host[:port][/db][?opts]``,
``rediss://`` for TLS, ``unix://`` is not offered), plus celeriac's options:

* ``prefix`` (or kombu's name, ``global_keyprefix``): a string put before every
  key, so several apps share one Redis database.

Other query options pass through to redis-py: ``socket_timeout``,
``socket_connect_timeout``, ``ssl_cert_reqs`` (``none``, ``optional``,
``required``; Celery's ``CERT_NONE`` spelling works too), ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ...

The driver is optional: this module imports ``redis`` only when a URL is
opened, and says how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigurationError
from .url_schemes import redact_url

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

__all__ = ["driver_errors", "open_pool", "split_prefix", "start_hint", "storage_name"]

DEFAULT_PORT = 6379

_PREFIX_OPTIONS = ("prefix", "global_keyprefix")
_CERT_REQS = {"cert_none": "none", "cert_optional": "optional", "cert_required": "required"}


def split_prefix(url: str) -> tuple[str, str]:
    """``url`` without celeriac's own query options, and the key prefix it named."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(f"not a Redis URL: {url!r}; use redis:// or rediss://")
    prefix = ""
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _PREFIX_OPTIONS:
            prefix = value
        elif name == "ssl_cert_reqs":
            kept.append((name, _CERT_REQS.get(value.lower(), value.lower())))
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), prefix


def open_pool(url: str, *, blocking: bool = False, **overrides: Any) -> tuple[ConnectionPool, str]:
    """A connection pool for ``url`` and the key prefix; nothing is connected yet.

    Connections speak RESP2 (as Celery's do; ``?protocol=3`` in the URL wins) and
    retry a command once on a connection error (a pooled socket that a Redis
    restart closed), with no backoff, so an unreachable server fails fast.
    ``blocking`` bounds the pool: callers wait for a free connection instead of
    opening one per concurrent command.
    """
    try:
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio import ConnectionPool as Pool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides redis
        raise ConfigurationError(
            f"the Redis driver is not installed (needed for {url.partition('://')[0]}:// URLs); "
            "install it with: pip install 'celeriac[redis]'"
        ) from exc
    plain, prefix = split_prefix(url)
    kwargs: dict[str, Any] = {"retry": Retry(NoBackoff(), 1), "protocol": 2, **overrides}
    try:
        if blocking:
            kwargs.setdefault("max_connections", 64)
            pool: ConnectionPool = BlockingConnectionPool.from_url(plain, **kwargs)
        else:
            pool = Pool.from_url(plain, **kwargs)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact_url(url)}: {exc}") from exc
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return pool, prefix


def _hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` packing commands with hiredis, where hiredis is installed.

    redis-py's sync connections pack with hiredis, its asyncio ones in Python:
    about 40 µs for a publish of one task, a quarter of a ``delay()``.
    """
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis comes with the redis extra
        return connection_class
    from redis.exceptions import DataError

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # None, bool, ...: redis-py's error for them
            raise DataError(f"invalid argument in Redis command {args[0]!r}: {exc}") from exc

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack_command})


def start_hint(url: str) -> str:
    """How to start the Redis that ``url`` names (said in every "cannot reach Redis" error).

    The URL's own host and port, TLS for ``rediss://``; never its password, and
    never a flag that turns persistence off (a broker's messages must survive
    a restart).
    """
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:  # not a port number: redis-py said so already
        port = DEFAULT_PORT
    try:
        bind = f" --bind {ipaddress.ip_address(host)}"
    except ValueError:  # a name: Redis binds addresses only, loopback by default
        bind = ""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parts.scheme == "rediss":
        return (
            f"start Redis with TLS on {address}, e.g.: redis-server --daemonize yes{bind}"
            f" --port 0 --tls-port {port} --tls-cert-file redis.crt --tls-key-file redis.key"
            " --tls-ca-cert-file ca.crt"
        )
    return f"start Redis on {address}, e.g.: redis-server --daemonize yes{bind} --port {port}"


def storage_name(pool: ConnectionPool) -> str:
    """The database a pool's connections reach (``celeriac.shared_storage``): server and db."""
    kwargs = pool.connection_kwargs
    return f"redis:{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


@contextlib.contextmanager
def driver_errors(
    what: str, url: str, unreachable: type[Exception], failed: type[Exception]
) -> Iterator[None]:
    """redis-py's exceptions as celeriac's, naming ``what`` and the URL (password hidden)."""
    from redis import exceptions as redis_errors

    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise unreachable(
            f"cannot reach the {what} at {redact_url(url)}: {exc}; {start_hint(url)}"
        ) from exc
    except redis_errors.RedisError as exc:
        raise failed(f"{what} {redact_url(url)}: {exc}") from exc
