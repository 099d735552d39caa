"""redis-py's exceptions as celeriac's, at the boundary (``celeriac.errors`` draws the tree).

A refused, lost or timed-out connection becomes the caller's *unreachable*
error (``BrokerUnavailable`` for the broker), naming the URL with its password
hidden and how to start Redis; any other Redis error becomes its *failed* one
(``BrokerError``, ``BackendError``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

from ..errors import BrokerError, BrokerUnavailable
from ..url_schemes import redact_url
from .url import start_hint

__all__ = ["broker_errors", "driver_errors"]


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


def broker_errors(url: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """:func:`driver_errors` for a Redis broker at ``url``: ``with errors(): ...``."""
    return functools.partial(driver_errors, "Redis broker", url, BrokerUnavailable, BrokerError)
