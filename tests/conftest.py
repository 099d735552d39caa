from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from celeriac import Celeriac

if TYPE_CHECKING:
    import redis.asyncio as aioredis

pytest_plugins = ["celeriac.testing"]


@pytest.fixture
def app(celeriac_app: Celeriac) -> Celeriac:
    """A fresh in-memory app; tests register their own tasks on it."""
    return celeriac_app


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis client on the test module's ``url``, for looking at the keys."""
    import redis.asyncio as aioredis

    from celeriac.redis.connection import open_pool

    pool, _ = open_pool(url)
    client = aioredis.Redis(connection_pool=pool)
    yield client
    await client.aclose(close_connection_pool=True)
