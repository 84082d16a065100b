from django.db import models


class Order(models.Model):
    """The one row that the benchmarked view inserts per request."""

    sku = models.CharField(max_length=32)
    quantity = models.PositiveIntegerField()
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"
