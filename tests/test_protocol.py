"""The wire format: Celery protocol v2, pinned byte for byte, and checked against Celery itself."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import orjson
import pytest

from celeriac import Celeriac, sending
from celeriac.errors import MessageError
from celeriac.protocol import Message, TaskBody, decode_envelope, encode_envelope
from celeriac.sending import SendOptions


@pytest.fixture
def pinned_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sending, "_ORIGIN", "1234@host")


GOLDEN_HEADERS = (
    b'{"argsrepr":"(2, 3)","eta":null,"expires":null,"group":null,"group_index":null,'
    b'"id":"0b2d8f6e-6f0a-4e5e-9d7b-000000000001","ignore_result":false,"kwargsrepr":"{\'z\': 1}",'
    b'"lang":"py","origin":"1234@host","parent_id":null,"replaced_task_nesting":0,"retries":0,'
    b'"root_id":"0b2d8f6e-6f0a-4e5e-9d7b-000000000001","shadow":null,"stamped_headers":null,'
    b'"stamps":{},"task":"proj.add","timelimit":[null,null]}'
)
GOLDEN_BODY = b'[[2,3],{"z":1},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'


def test_golden_message_bytes(app: Celeriac, pinned_origin: None) -> None:
    opts = SendOptions(task_id="0b2d8f6e-6f0a-4e5e-9d7b-000000000001")
    out = app.build_outgoing("proj.add", (2, 3), {"z": 1}, opts)
    headers = orjson.dumps(dict(out.message.headers), option=orjson.OPT_SORT_KEYS)
    assert headers == GOLDEN_HEADERS
    assert out.message.body == GOLDEN_BODY
    assert out.message.content_type == "application/json"
    assert out.message.content_encoding == "utf-8"
    assert out.message.properties == {
        "correlation_id": "0b2d8f6e-6f0a-4e5e-9d7b-000000000001",
        "reply_to": "",
        "delivery_mode": 2,
        "priority": 0,
    }
    assert out.queue == "celery"
    assert out.not_before is None


def test_golden_tagged_types(app: Celeriac) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    args = (when, Decimal("1.10"), UUID(int=1), b"raw")
    out = app.build_outgoing("t", args, {}, SendOptions(task_id="x"))
    assert out.message.body.startswith(
        b'[[{"__type__":"datetime","__value__":"2026-01-02T03:04:05+00:00"},'
        b'{"__type__":"decimal","__value__":"1.10"},'
        b'{"__type__":"uuid","__value__":{"hex":"00000000000000000000000000000001"}},'
        b'{"__type__":"bytes","__value__":"raw"}],'
    )


def test_headers_match_celery_exactly(app: Celeriac, pinned_origin: None) -> None:
    """Celery's own as_task_v2 gives the same headers, properties and body."""
    import celery

    capp = celery.Celery("peer", set_as_current=False)
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    theirs = capp.amqp.as_task_v2(
        "id-1",
        "proj.add",
        args=(1, 2),
        kwargs={"k": "v"},
        eta=eta,
        retries=2,
        time_limit=30,
        soft_time_limit=20,
        origin="1234@host",
        group_id="g",
        group_index=3,
        parent_id="p",
        root_id="r",
    )
    opts = SendOptions(
        task_id="id-1",
        eta=eta,
        retries=2,
        time_limit=30,
        soft_time_limit=20,
        group_id="g",
        group_index=3,
        parent_id="p",
        root_id="r",
    )
    ours = app.build_outgoing("proj.add", (1, 2), {"k": "v"}, opts)
    assert dict(ours.message.headers) == theirs.headers
    assert orjson.loads(ours.message.body) == orjson.loads(orjson.dumps(theirs.body))
    assert ours.message.properties["correlation_id"] == theirs.properties["correlation_id"]
    assert ours.not_before == eta.timestamp()


def test_envelope_round_trip_and_kombu_shape() -> None:
    message = Message(
        {"id": "i", "task": "t"},
        b"\x00\xffbody",
        "application/x-msgpack",
        "binary",
        {"correlation_id": "i", "priority": 7},
    )
    raw = encode_envelope(message, queue="q")
    envelope = orjson.loads(raw)
    assert set(envelope) == {"body", "content-encoding", "content-type", "headers", "properties"}
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q"}
    back = decode_envelope(raw)
    assert back.body == message.body
    assert back.headers == message.headers
    assert back.priority == 7


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"body": "x"}',
        b'{"body": "!!", "headers": {}, "properties": {"body_encoding": "base64"}}',
    ],
)
def test_garbage_envelopes_are_message_errors(raw: bytes) -> None:
    with pytest.raises(MessageError):
        decode_envelope(raw)


@pytest.mark.parametrize(
    "payload",
    [{"a": 1}, [1, 2], [[1], {}, "x"], ["x", {}, {}], [[], [], {}]],
)
def test_malformed_bodies_are_message_errors(payload: object) -> None:
    with pytest.raises(MessageError):
        TaskBody.from_payload(payload)


def test_chain_travels_reversed_in_the_body(app: Celeriac) -> None:
    chain = [{"task": "c"}, {"task": "b"}]
    out = app.build_outgoing("a", (), {}, SendOptions(task_id="x", chain=chain))
    assert orjson.loads(out.message.body)[2]["chain"] == chain
