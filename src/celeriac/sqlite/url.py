"""Parsing of ``sqlite://`` URLs, shared by the SQLite broker and result store.

SQLAlchemy's convention: ``sqlite:///relative.db`` (three slashes, relative to
the current directory), ``sqlite:////abs/path.db`` (four: absolute). Query
parameters are returned for the caller to read.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import ConfigurationError

DEFAULT_URL = "sqlite:///celeriac.db"


def parse_sqlite_url(url: str) -> tuple[Path, dict[str, str]]:
    """Return the database path and the query parameters of ``url``."""
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    path_part, _, query = rest.partition("?")
    if not path_part.startswith("/") or path_part in ("/", ""):
        raise ConfigurationError(
            f"sqlite URL {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = Path(path_part[1:])
    return path.resolve(), dict(parse_qsl(query))
