# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""``POST /orders/`` places an order (``orders.views.place``)."""

from django.urls import path
from orders import views

urlpatterns = [path("orders/", views.place)]
