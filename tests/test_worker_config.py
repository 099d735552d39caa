"""The worker's shape: which pools a broker allows is the broker class's to say."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.brokers import SCHEMES
from celeriac.errors import ConfigurationError
from celeriac.testing import memory_app
from celeriac.worker import choose_config
from celeriac.worker.config import expand_hostname


def test_a_broker_that_lives_in_one_process_refuses_the_process_pool() -> None:
    app = memory_app()
    assert SCHEMES["memory"]().shares_processes is False
    with pytest.raises(ConfigurationError, match=r"memory:// broker lives inside one process"):
        choose_config(app, pool="process")
    for pool in ("thread", "async", "solo"):
        assert choose_config(app, pool=pool).pool == pool


def test_choosing_the_shape_connects_nothing() -> None:
    # An unwritable SQLite path would fail on connect; the shape is chosen without one.
    app = Celeriac("x", broker_url="sqlite:////proc/nope/x.db", set_as_current=False)
    assert choose_config(app, pool="process", concurrency=2).processes == 2


def test_an_unknown_broker_scheme_is_named() -> None:
    app = Celeriac("x", broker_url="bogus://x", set_as_current=False)
    with pytest.raises(ConfigurationError, match="unknown broker scheme 'bogus'"):
        choose_config(app, pool="solo")


@pytest.mark.parametrize("name", ["w1@%h", "%n-x@%d", "w2", "x@y", "a%%b@%n", "%h"])
def test_node_names_expand_as_celerys(name: str) -> None:
    """``-n`` as Celery's worker reads it (``celery.utils.nodenames``), ``celery`` made
    ``celeriac`` where Celery fills in its default name."""
    nodenames = pytest.importorskip("celery.utils.nodenames")
    host = "box.example.org"
    theirs = nodenames.host_format(nodenames.default_nodename(name), host=host)
    assert expand_hostname(name, host) == theirs.replace("celery@", "celeriac@", 1)
