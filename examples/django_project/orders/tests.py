# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""An order's task runs if and only if the order commits, on a real worker.

Django's test runner makes the test database (``test_test``); these tests point
the task app at it and run ``celeriac -A proj worker`` on it, the worker's Django
too (``DATABASE_NAME``), so the worker reads what the tests commit. Commits
matter here, so the cases are ``TransactionTestCase``s.
"""

import tempfile
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.test import TransactionTestCase
from proj.celery import app

from celeriac import signals
from celeriac.contrib.django import database_url
from celeriac.testing import WorkerProcess

from .models import Order
from .services import OutOfStockError, place_order, place_order_on_commit
from .tasks import database_session, ship

PROJECT = Path(__file__).resolve().parent.parent
WAIT = 20.0
"""Seconds a test waits for a task's result before it fails."""


class OrdersWithWorker(TransactionTestCase):
    worker: WorkerProcess
    logs: tempfile.TemporaryDirectory[str]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        app.conf.broker_url = app.conf.result_backend = database_url()  # the test database
        cls.logs = tempfile.TemporaryDirectory()
        cls.worker = WorkerProcess(
            "proj",
            "--concurrency=1",
            cwd=PROJECT,
            env={"DATABASE_NAME": connection.settings_dict["NAME"]},
            log=Path(cls.logs.name) / "worker.log",
        )
        cls.worker.start()

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.worker.stop()
        app.close()  # Django drops the test database next: no session may be left on it
        log = cls.worker.log()
        cls.logs.cleanup()
        super().tearDownClass()
        assert code == 0, log

    def published(self) -> list[str]:
        """The ids of the tasks this process publishes from now on (Celery's signal)."""
        ids: list[str] = []

        def record(headers: dict[str, Any], **kwargs: Any) -> None:
            ids.append(headers["id"])

        signals.after_task_publish.connect(record, weak=False)
        self.addCleanup(signals.after_task_publish.disconnect, record)
        return ids

    def test_committed_order_is_shipped(self) -> None:
        response = self.client.post("/orders/", {"item": "teapot"})
        self.assertEqual(response.status_code, 201)
        order, task_id = response.json()["order"], response.json()["task"]
        self.assertEqual(
            app.AsyncResult(task_id).get(timeout=WAIT), f"shipped order {order}: teapot"
        )
        self.assertTrue(Order.objects.get(pk=order).shipped)

    def test_rolled_back_order_is_never_shipped(self) -> None:
        sent: list[str] = []

        def record(headers: dict[str, Any], **kwargs: Any) -> None:
            sent.append(headers["id"])

        signals.before_task_publish.connect(record, weak=False)
        self.addCleanup(signals.before_task_publish.disconnect, record)
        with self.assertRaises(OutOfStockError):
            place_order("unicorn", in_stock=False)
        (rolled_back,) = sent
        self.assertFalse(Order.objects.exists())
        self.assertFalse(app.AsyncResult(rolled_back).known())  # no message, no PENDING
        # A task sent after it runs; the rolled-back one never did (it would have failed:
        # its order does not exist) and never will (its message was never committed).
        _, later = place_order("teapot")
        app.AsyncResult(later).get(timeout=WAIT)
        self.assertFalse(app.AsyncResult(rolled_back).known())

    def test_the_view_refuses_and_rolls_back(self) -> None:
        response = self.client.post("/orders/", {"item": "unicorn"})
        self.assertEqual(response.status_code, 409)
        self.assertFalse(Order.objects.exists())

    def test_delay_on_commit_sends_after_the_commit(self) -> None:
        published = self.published()
        with transaction.atomic():
            order = Order.objects.create(item="kettle")
            ship.delay_on_commit(order.pk)
            self.assertEqual(published, [])  # not before the order is committed
        (task_id,) = published
        self.assertEqual(app.AsyncResult(task_id).get(timeout=WAIT), f"shipped {order}")

        order = place_order_on_commit("toaster")
        (_, task_id) = published
        app.AsyncResult(task_id).get(timeout=WAIT)
        order.refresh_from_db()
        self.assertTrue(order.shipped)

    def test_delay_on_commit_sends_nothing_on_rollback(self) -> None:
        published = self.published()
        with self.assertRaises(OutOfStockError), transaction.atomic():
            order = Order.objects.create(item="unicorn")
            ship.apply_async_on_commit((order.pk,))
            raise OutOfStockError(order.item)
        self.assertEqual(published, [])

    def test_worker_closes_the_connection_after_each_task(self) -> None:
        # CONN_MAX_AGE = 0 (Django's default): a new session per task, as per request.
        first = database_session.delay().get(timeout=WAIT)
        second = database_session.delay().get(timeout=WAIT)
        self.assertNotEqual(first, second)
