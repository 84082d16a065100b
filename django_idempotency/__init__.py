"""Idempotency-Key support for Django REST framework views."""

from .decorators import idempotent

__all__ = ["idempotent"]
__version__ = "0.1.0.dev0"
