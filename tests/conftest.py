from __future__ import annotations

import pytest

from celeriac import Celeriac

pytest_plugins = ["celeriac.testing"]


@pytest.fixture
def app(celeriac_app: Celeriac) -> Celeriac:
    """A fresh in-memory app; tests register their own tasks on it."""
    return celeriac_app
