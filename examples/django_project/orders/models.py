# mypy: ignore-errors
# (Django ships no type hints: mypy --strict has nothing to check here)
"""An order, and whether the ``ship`` task has run for it."""

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    shipped = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.item}"
