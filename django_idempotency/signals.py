"""Signals for what happens to each guarded request: hooks for metrics and audit.

Connect a receiver to count or record outcomes without subclassing anything::

    from django.dispatch import receiver
    from django_idempotency import signals

    @receiver(signals.replayed)
    def count_replay(sender, *, request, scope, key, method, path, **kwargs): ...

Every signal is sent with ``sender``, the store's class, and these keyword
arguments:

``request``
    The request as the view receives it (a DRF ``Request`` or an ``HttpRequest``).
``scope``, ``key``
    The caller's scope as stored (for example ``user:42``) and the key it sent.
``method``, ``path``
    The request's method and path.

and, as each signal says, ``status`` (an HTTP status code) and ``exception``.

Receivers run in the request, after the outcome is decided; they cannot
change it. An exception raised by a receiver is logged (at ERROR, on the
``django_idempotency.decorators`` logger) and does not reach the client: a
broken metrics hook must not break the guarantee. With no receivers
connected, a signal costs one check of an empty list.
"""

from __future__ import annotations

from django.dispatch import Signal


class Outcome(Signal):
    """A Django signal with a name, which log lines use."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"<Outcome {self.name}>"


#: The request claimed its key: the view runs now.
claimed = Outcome("claimed")
#: The same request had finished before: its stored response (``status``) is sent.
replayed = Outcome("replayed")
#: The key was used for a different request: 409 ``idempotency_conflict``.
conflict = Outcome("conflict")
#: A request with the key is still running: 409 ``idempotency_key_in_use``.
in_use = Outcome("in_use")
#: The view's response (``status``) was kept: retries replay it.
stored = Outcome("stored")
#: The claim was given up, so a retry runs the view again: the view answered a
#: status that is not kept (``status``), or raised (``exception``; ``status`` None).
released = Outcome("released")
#: The store failed (``exception``): 503 ``idempotency_store_unavailable``: the view did
#: not run, or its effects were rolled back with the claim.
store_unavailable = Outcome("store_unavailable")

ALL = (claimed, replayed, conflict, in_use, stored, released, store_unavailable)
