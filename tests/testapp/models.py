from django.db import models


class Widget(models.Model):
    """A row that decorated test views create, so tests can count side effects."""

    name = models.CharField(max_length=100)
    owner = models.CharField(max_length=100, blank=True)
