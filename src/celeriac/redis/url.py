"""``redis://`` and ``rediss://`` URLs, shared by the Redis broker and result store.

redis-py's own URL syntax (``redis://[[user]:password@]host[:port][/db][?opts]``,
``rediss://`` for TLS, ``unix://`` is not offered), plus celeriac's options:

* ``prefix`` (or kombu's name, ``global_keyprefix``): a string put before every
  key, so several apps share one Redis database.

Other query options pass through to redis-py: ``socket_timeout``,
``socket_connect_timeout``, ``ssl_cert_reqs`` (``none``, ``optional``,
``required``; Celery's ``CERT_NONE`` spelling works too), ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ...
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError

__all__ = ["DEFAULT_PORT", "split_prefix", "start_hint"]

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
