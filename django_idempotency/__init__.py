"""Idempotency-Key support for Django REST framework views."""

from .decorators import idempotent
from .errors import exception_handler

__all__ = ["exception_handler", "idempotent"]
__version__ = "0.1.0.dev0"
