"""Serializers: kombu-compatible JSON tags, msgpack, yaml, and pickle refused by default."""

from __future__ import annotations

import pickle
from datetime import UTC, date, datetime, time
from decimal import Decimal
from uuid import uuid4

import pytest
from kombu.utils import json as kombu_json

from celeriac import errors
from celeriac.errors import ContentDisallowed, SerializationError
from celeriac.exception_codec import decode_exception, encode_exception
from celeriac.serialization import Codec, json_dumps, json_loads

VALUES = [
    datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    datetime(2026, 5, 6, 7, 8, 9),
    date(2026, 5, 6),
    time(7, 8, 9),
    Decimal("3.14159"),
    uuid4(),
    b"plain bytes",
    b"\xff\xfe binary",
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_json_tags_read_by_kombu(value: object) -> None:
    assert kombu_json.loads(json_dumps({"v": [value]})) == {"v": [value]}  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_json_tags_written_by_kombu(value: object) -> None:
    assert json_loads(kombu_json.dumps({"v": [value]})) == {"v": [value]}  # type: ignore[no-untyped-call]


def test_tuples_become_lists() -> None:
    assert json_loads(json_dumps((1, (2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("name", ["json", "msgpack", "yaml"])
def test_codecs_round_trip(name: str) -> None:
    codec = Codec([name])
    data = {"a": [1, 2.5, "x", None, True], "nested": {"k": "v"}}
    payload, content_type, _ = codec.dumps(data, name)
    assert codec.loads(payload, content_type) == data


def test_msgpack_keeps_datetimes() -> None:
    codec = Codec(["msgpack"])
    when = datetime(2026, 1, 1, tzinfo=UTC)
    payload, content_type, _ = codec.dumps([when], "msgpack")
    assert codec.loads(payload, content_type) == [when]


def test_pickle_refused_unless_accepted() -> None:
    payload = pickle.dumps([1, 2])
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        Codec(["json"]).loads(payload, "application/x-python-serialize")
    assert Codec(["json", "pickle"]).loads(payload, "application/x-python-serialize") == [1, 2]


def test_unknown_content_type_refused() -> None:
    with pytest.raises(ContentDisallowed):
        Codec(["json"]).loads(b"x", "application/x-evil")


def test_undecodable_payload_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        Codec(["json"]).loads(b"{not json", "application/json")


def test_unserializable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="json"):
        Codec(["json"]).dumps([object()], "json")


@pytest.mark.parametrize(
    "exc",
    [
        errors.TaskRevokedError("terminated"),
        errors.TimeLimitExceeded("took too long"),
        errors.SoftTimeLimitExceeded(),
        errors.ChordError("Dependency 1 raised"),
        errors.NotRegistered("no.such.task"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_celerys_failures_are_stored_as_celerys_and_read_as_celeriacs(exc: Exception) -> None:
    """Celery's backend (``exception_to_python``) is the oracle: what celeriac stores, a
    Celery client raises as Celery's own class; what Celery stores, celeriac reads as its."""
    celery = pytest.importorskip("celery")
    backend_base = pytest.importorskip("celery.backends.base")
    celery_exceptions = pytest.importorskip("celery.exceptions")
    app = celery.Celery("codec", set_as_current=False)
    backend = backend_base.Backend(app)
    try:
        theirs = backend.exception_to_python(encode_exception(exc))
        celery_class = getattr(celery_exceptions, type(exc).__name__)
        assert type(theirs) is celery_class
        stored_by_celery = backend.prepare_exception(celery_class(*exc.args), "json")
        ours = decode_exception(stored_by_celery)
        assert type(ours) is type(exc) and ours.args == exc.args
    finally:
        app.close()
