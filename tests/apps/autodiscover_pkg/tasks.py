"""Tasks found by ``autodiscover_tasks``: ``shared_task``, as a reusable Django app writes them."""

from __future__ import annotations

from celeriac import shared_task


@shared_task
def double(x: int) -> int:
    return 2 * x
