"""Canvas flows, end to end, on every broker: the examples of Celery's canvas guide and more."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import (
    Celeriac,
    ChordError,
    GroupResult,
    Task,
    chain,
    chord,
    group,
    signature,
    states,
)
from celeriac._sync import run_sync
from celeriac.protocol import Outgoing
from celeriac.testing import memory_app, worker_thread

from .conformance.targets import BROKERS, Target


@pytest.fixture(params=BROKERS, ids=lambda t: t.name)
def flow_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celeriac]:
    target: Target = request.param
    url = target.make_url(tmp_path)
    app = (
        memory_app() if url.startswith("memory://") else Celeriac("flows", broker=url, backend=url)
    )
    app.conf.broker_lease_timeout = 2.0
    yield app
    app.close()


class Tasks:
    """The tasks of Celery's canvas guide, registered on one app."""

    def __init__(self, app: Celeriac):
        self.bodies: Counter[str] = Counter()
        self.errbacks: list[str] = []
        bodies, errbacks = self.bodies, self.errbacks

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        @app.task
        def tsum(numbers: list[int]) -> int:
            bodies["tsum"] += 1
            return sum(numbers)

        @app.task
        def fail(x: int) -> None:
            raise ValueError(f"bad {x}")

        @app.task
        def on_error(task_id: str) -> None:
            errbacks.append(task_id)

        @app.task(bind=True)
        def replaced(self: Task[[int], int], x: int) -> int:
            self.replace(add.s(x, 100))

        self.add, self.tsum, self.fail, self.on_error, self.replaced = (
            add,
            tsum,
            fail,
            on_error,
            replaced,
        )


@pytest.fixture
def tasks(flow_app: Celeriac) -> Tasks:
    return Tasks(flow_app)


def test_chain_of_adds_is_16(flow_app: Celeriac, tasks: Tasks) -> None:
    add = tasks.add
    with worker_thread(flow_app):
        assert chain(add.s(2, 2), add.s(4), add.s(8))().get(timeout=10) == 16
        result = (add.s(2, 2) | add.s(4) | add.s(8)).delay()
        assert result.get(timeout=10) == 16
        assert result.parent is not None and result.parent.get(timeout=10) == 8
        assert add.si(1, 1).delay().get(timeout=10) == 2


def test_group_of_ten_adds(flow_app: Celeriac, tasks: Tasks) -> None:
    add = tasks.add
    with worker_thread(flow_app):
        result = group(add.s(i, i) for i in range(10))()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=10) == [i + i for i in range(10)]
        assert result.ready() and result.successful() and not result.failed()
        assert result.completed_count() == 10
        restored = GroupResult.restore(result.id, app=flow_app)
        assert restored is not None and [r.id for r in restored] == [r.id for r in result]
        assert restored.join(timeout=5) == result.get(timeout=5)


def test_chord_summing_a_group_is_90(flow_app: Celeriac, tasks: Tasks) -> None:
    add, tsum = tasks.add, tasks.tsum
    with worker_thread(flow_app):
        assert chord(add.s(i, i) for i in range(10))(tsum.s()).get(timeout=10) == 90
        assert chord([], tsum.s()).apply_async().get(timeout=10) == 0
    assert tasks.bodies["tsum"] == 2


def test_map_starmap_chunks(flow_app: Celeriac, tasks: Tasks) -> None:
    add, tsum = tasks.add, tasks.tsum
    with worker_thread(flow_app):
        assert tsum.map([list(range(10)), list(range(100))]).delay().get(timeout=10) == [45, 4950]
        pairs = list(zip(range(10), range(10), strict=True))
        assert add.starmap(pairs).delay().get(timeout=10) == [i + i for i in range(10)]
        pieces = add.chunks(zip(range(100), range(100), strict=True), 10)
        result = pieces.apply_async()
        assert isinstance(result, GroupResult) and len(result) == 10
        assert result.get(timeout=10) == [
            [2 * i for i in range(j, j + 10)] for j in range(0, 100, 10)
        ]


def test_chord_with_a_failing_header_task(flow_app: Celeriac, tasks: Tasks) -> None:
    add, tsum, fail = tasks.add, tasks.tsum, tasks.fail
    with worker_thread(flow_app):
        header = [add.s(1, 1), fail.s(7), add.s(2, 2)]
        result = chord(header, tsum.s().set(link_error=tasks.on_error.s())).apply_async()
        with pytest.raises(ChordError, match=r"Dependency .* raised ValueError\('bad 7'\)"):
            result.get(timeout=10)
        deadline = time.monotonic() + 5
        while not tasks.errbacks and time.monotonic() < deadline:
            time.sleep(0.02)
    assert tasks.bodies["tsum"] == 0, "the body must not run"
    assert tasks.errbacks == [result.id]
    assert result.parent is not None
    failing_id = result.parent[1].id  # type: ignore[index]
    assert failing_id in str(result.result)


def test_nested_flows(flow_app: Celeriac, tasks: Tasks) -> None:
    add, tsum = tasks.add, tasks.tsum
    with worker_thread(flow_app):
        # a chain inside a group inside a chord: [(1+1)+1, 2+2] -> 7
        nested = chord(group(chain(add.s(1, 1), add.s(1)), add.s(2, 2)), tsum.s())
        assert nested.apply_async().get(timeout=10) == 7
        # a chord in a chain: 1+1=2 -> [2+1, 2+2] -> 7 -> 7+10
        flow = chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s()), add.s(10))
        assert flow.apply_async().get(timeout=10) == 17
        # group then task inside a chain becomes a chord
        upgraded = chain(group(add.s(1, 1), add.s(2, 2)), tsum.s())
        assert upgraded.apply_async().get(timeout=10) == 6


def test_link_on_a_group_member_and_signature_from_the_wire(
    flow_app: Celeriac, tasks: Tasks
) -> None:
    add = tasks.add
    with worker_thread(flow_app):
        wire = dict(chain(add.s(1, 2), add.s(3)))
        assert signature(wire, app=flow_app).apply_async().get(timeout=10) == 6


def test_replace_takes_over_the_id(flow_app: Celeriac, tasks: Tasks) -> None:
    with worker_thread(flow_app):
        result = tasks.replaced.delay(5)
        assert result.get(timeout=10) == 105
        in_chain = (tasks.replaced.s(1) | tasks.add.s(1000)).delay()
        assert in_chain.get(timeout=10) == 1101


def test_chain_of_100_links(flow_app: Celeriac, tasks: Tasks) -> None:
    add = tasks.add
    with worker_thread(flow_app):
        assert chain(add.s(0, 1), *(add.s(1) for _ in range(99)))().get(timeout=60) == 100


def test_children_are_recorded(flow_app: Celeriac) -> None:
    @flow_app.task
    def leaf(x: int) -> int:
        return x

    @flow_app.task
    def parent() -> None:
        leaf.delay(1)
        leaf.delay(2)

    with worker_thread(flow_app):
        result = parent.delay()
        result.get(timeout=10)
        assert [child.get(timeout=10) for child in result.children] == [1, 2]


async def test_async_twins(flow_app: Celeriac, tasks: Tasks) -> None:
    add, tsum = tasks.add, tasks.tsum
    with worker_thread(flow_app):
        one = await add.s(1, 2).adelay()
        assert await one.aget(timeout=10) == 3
        many = await group(add.s(i, 1) for i in range(3)).aapply_async()
        assert await many.aget(timeout=10) == [1, 2, 3]
        summed = await chord([add.s(1, 1), add.s(2, 2)], tsum.s()).aapply_async()
        assert await summed.aget(timeout=10) == 6
    await flow_app.aclose()


def test_chord_of_1000_completes_once() -> None:
    app = memory_app()
    tasks = Tasks(app)
    with worker_thread(app, concurrency=8):
        result = chord(tasks.add.s(i, 0) for i in range(1000))(tasks.tsum.s())
        assert result.get(timeout=60) == sum(range(1000))
        time.sleep(0.2)
    assert tasks.bodies["tsum"] == 1
    app.close()


def test_duplicate_delivery_of_a_header_task_counts_once() -> None:
    """Header task 0 is delivered twice while task 2 is still blocked: the body must wait."""
    app = memory_app()
    tasks = Tasks(app)
    gate = threading.Event()

    @app.task
    def blocked(x: int) -> int:
        assert gate.wait(10)
        return x

    result = chord(
        [tasks.add.s(1, 0), tasks.add.s(2, 0), blocked.s(3)], tasks.tsum.s()
    ).apply_async()

    async def duplicate_first_message() -> None:
        broker = await app.abroker()
        consumer = broker.consumer(["celery"], "duplicator")
        (delivery,) = await consumer.fetch(1, 1.0)
        assert delivery.message.headers["group_index"] == 0
        copy = Outgoing("celery", delivery.message)
        await broker.publish([copy, copy])
        await consumer.ack(delivery)
        await consumer.close()

    run_sync(duplicate_first_message)
    with worker_thread(app, concurrency=4):
        time.sleep(0.5)
        assert result.state == states.PENDING, "the body fired before every header task finished"
        assert tasks.bodies["tsum"] == 0
        gate.set()
        assert result.get(timeout=10) == 6
        time.sleep(0.2)
    assert tasks.bodies["tsum"] == 1
    app.close()
