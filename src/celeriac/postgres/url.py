"""``postgresql://`` URLs (``postgres://`` too), shared by the PostgreSQL broker and result store.

libpq's URL syntax (``postgresql://[user[:password]@]host[:port]/dbname[?opts]``;
libpq's query options such as ``sslmode``, ``sslrootcert``, ``connect_timeout``,
``application_name`` pass through), plus celeriac's own:

* ``schema``: the PostgreSQL schema celeriac's tables live in (default
  ``public``), so several apps, or the tests, share one database. Created on
  first use if missing.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError
from ..url_schemes import redact_url

__all__ = ["DEFAULT_SCHEMA", "SCHEMES", "split_schema", "start_hint", "storage_name"]

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "public"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def split_schema(url: str) -> tuple[str, str]:
    """``url`` as libpq reads it (celeriac's options taken out), and the schema it named."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"not a PostgreSQL URL: {redact_url(url)}; use postgresql://user@host:port/dbname"
        )
    schema = DEFAULT_SCHEMA
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            schema = value
        else:
            kept.append((name, value))
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"bad schema {schema!r} in {redact_url(url)}: letters, digits and _, "
            "not starting with a digit, at most 63"
        )
    libpq = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(kept)))
    return libpq, schema


def storage_name(url: str) -> str:
    """The database and schema ``url`` names, as a broker's or store's ``storage``
    (``celeriac.shared_storage``): equal names share transactions."""
    parts = urlsplit(url)
    _, schema = split_schema(url)
    host = parts.hostname or "localhost"
    return f"postgresql:{host}:{parts.port or 5432}{parts.path or '/'}#{schema}"


def start_hint(url: str) -> str:
    """How to start the PostgreSQL that ``url`` names (said in every "cannot reach" error);
    never the password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return (
        f"is PostgreSQL running on {host}:{port}? On Debian: "
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start; "
        f"check with: pg_isready -h {host} -p {port}"
    )
