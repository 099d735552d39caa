# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""The tasks: found by ``app.autodiscover_tasks()`` in the worker, as in Celery."""

from django.db import connection

from celeriac import shared_task

from .models import Order


@shared_task
def ship(order_id: int) -> str:
    """Reads the order the view committed: a task sent in a rolled-back transaction
    would find none, and it never runs."""
    order = Order.objects.get(pk=order_id)
    order.shipped = True
    order.save(update_fields=["shipped"])
    return f"shipped {order}"


@shared_task
def database_session() -> int:
    """The PostgreSQL session this task ran in: a worker closes the connection after each
    task as Django does after each request (``CONN_MAX_AGE = 0``), so each one differs."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return int(pid)
