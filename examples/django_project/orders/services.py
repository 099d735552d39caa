# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""Placing an order: the two ways to send its task only if the order is committed."""

from django.db import connection, transaction
from proj.celery import app

from .models import Order
from .tasks import ship


class OutOfStockError(Exception):
    """The order is refused after it was written: its transaction rolls back."""


def place_order(item: str, *, in_stock: bool = True) -> tuple[Order, str]:
    """The order and its ``ship`` task in one transaction: the message is a row that
    commits with the order, or never exists. Returns the order and the task's id."""
    with transaction.atomic():
        order = Order.objects.create(item=item)
        with app.transaction(connection):
            result = ship.delay(order.pk)
        if not in_stock:
            raise OutOfStockError(item)
    return order, result.id


def place_order_on_commit(item: str) -> Order:
    """Celery's way: ``ship`` is sent after the commit (never on a rollback), by this
    process, so a crash between the two loses it."""
    with transaction.atomic():
        order = Order.objects.create(item=item)
        ship.delay_on_commit(order.pk)
    return order
