"""A claim after ``begin``: its lease renewed while the view runs, its response
stored once the view's writes have committed (Redis cannot join their
transaction), and retried in the background until it is stored.

Two daemon threads per process: the renewer and the retrier, so that retries
waiting on a server that is down never delay the renewal of healthy claims.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.signals import request_finished
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from redis.exceptions import RedisError

from .scripts import FINISH, LAPSE_MEMORY_MS, RENEW, min_replicas, timeout_budget, within

logger = logging.getLogger("django_idempotency.stores.redis")

#: The delays between attempts to store a completion: doubling from the first
#: to the last, then the last until the record expires.
RETRY_FIRST, RETRY_LAST = 0.1, 5.0


@dataclass(eq=False)
class Held:
    """A live claim; its in-flight value (``token``) is the ownership token."""

    client: Any
    key: str
    token: bytes
    lease_ms: int
    budget_left: float  # what the request's time budget has left after the claim
    renew_at: float = 0.0
    done: bool = False
    # The completed value, once the view's writes committed: from then on it
    # is stored (and retried) instead of the lease being renewed.
    value: bytes | None = None
    ttl_ms: int = 0
    give_up_at: float = 0.0  # monotonic: the record's expiry
    retry_at: float = 0.0
    delay: float = RETRY_FIRST
    attempts: int = 0
    # Orders a renewal against finish and release: once ``done`` is set under
    # it, no renewal runs after their script (it would re-claim the key).
    lock: threading.Lock = field(default_factory=threading.Lock)


class Keeper:
    """A daemon thread that renews the leases of the claims it holds, or
    retries their completions."""

    def __init__(self, name: str, *, retries: bool) -> None:
        self.name, self.retries = name, retries
        self.lock = threading.Lock()
        self.held: set[Held] = set()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.next_at = 0.0  # when the thread next wakes by itself

    def hold(self, held: Held) -> None:
        if held.value is None:
            held.renew_at = time.monotonic() + held.lease_ms / 3000
        with self.lock:
            self.held.add(held)
            if self.thread is None or not self.thread.is_alive():  # threads do not survive a fork
                self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
                self.thread.start()
            wake = self.due(held) < self.next_at  # rarely, with one lease for all
        if wake:
            self.wake.set()

    def forget(self, held: Held) -> None:
        with self.lock:
            self.held.discard(held)

    def run(self) -> None:
        while True:
            self.wake.clear()
            with self.lock:
                held = list(self.held)
            now = time.monotonic()
            # Servers that just failed a retry: the other completions waiting
            # for them wait for their next turn instead of each timing out now.
            down: set[int] = set()
            for one in held:
                if self.due(one) > now:
                    continue
                server = id(getattr(one.client, "connection_pool", one.client))
                try:
                    if not self.retries:
                        renew(one)
                    elif server in down:
                        one.retry_at = now + one.delay
                    elif not complete(one, background=True):
                        down.add(server)
                except Exception:  # keep the others going whatever happens
                    logger.exception("Keeping idempotency claim %s failed", one.key)
            with self.lock:
                self.next_at = min((self.due(h) for h in self.held), default=now + 60)
                next_at = self.next_at
            self.wake.wait(max(0.0, next_at - time.monotonic()))

    def due(self, held: Held) -> float:
        if self.retries:
            return held.retry_at
        # A claim whose completion has started is not renewed; look again later.
        return held.renew_at if held.value is None else time.monotonic() + 60


renewer = Keeper("idempotency-lease-renewer", retries=False)
retrier = Keeper("idempotency-completion-retrier", retries=True)


def renew(held: Held) -> None:
    with held.lock:
        if held.done or held.value is not None:
            return
        held.renew_at = time.monotonic() + held.lease_ms / 3000
        try:
            # Bounded, as one thread renews every claim of the process in turn;
            # past two thirds of the lease the claim has lapsed anyway.
            with within(min(timeout_budget(), held.lease_ms / 1500)):
                kept = RENEW(held.client, held.key, held.token, held.lease_ms + LAPSE_MEMORY_MS)
        except RedisError as exc:
            logger.warning("Could not renew the lease of idempotency claim %s: %s", held.key, exc)
            return
    if not kept:
        drop(held)
        logger.warning(
            "Idempotency claim %s lost its lease while the view ran: another request took "
            "the key over, and this request's response will not be stored.",
            held.key,
        )


def drop(held: Held) -> None:
    """The claim is over (stored, released or given up): nobody keeps it."""
    with held.lock:
        held.done = True
    renewer.forget(held)
    retrier.forget(held)


def start_completion(held: Held, value: bytes, ttl_ms: int, give_up_at: float) -> None:
    with held.lock:
        if held.done:  # released meanwhile
            return
        held.value, held.ttl_ms, held.give_up_at = value, ttl_ms, give_up_at
        held.retry_at = time.monotonic() + RETRY_FIRST  # for the retrier, if this fails
    complete(held)


def complete(held: Held, *, background: bool = False) -> bool:
    """Store ``held.value``, owner-checked; False if it is left to the retrier."""
    with held.lock:
        if held.done or held.value is None:
            return True
        held.attempts += 1
        replicas, problem, stored = min_replicas(), None, False
        # In the request, what its budget has left; in the background, a budget per attempt.
        budget = timeout_budget() if background else max(0.0, held.budget_left)
        started = time.monotonic()
        try:
            with within(budget):
                args = (held.token, held.value, held.ttl_ms)
                stored, acknowledged = FINISH.write(held.client, held.key, args, replicas)
            if stored and acknowledged < replicas:
                problem = f"WAIT: {acknowledged} of {replicas} replicas acknowledged it"
        except RedisError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if not background:
            held.budget_left -= time.monotonic() - started
        expired = time.monotonic() >= held.give_up_at
        if problem is not None and not expired:
            held.retry_at = time.monotonic() + held.delay
            held.delay = min(RETRY_LAST, held.delay * 2)
        attempts = held.attempts
    if problem is None or expired:
        drop(held)
    if problem is None and not stored:
        logger.warning(
            "Idempotency claim %s had lost its lease; its response was not stored, and the "
            "request that took the key over keeps its own.",
            held.key,
        )
    elif problem is None and attempts > 1:
        logger.warning(
            "Stored the response of idempotency claim %s at attempt %d.", held.key, attempts
        )
    elif problem is not None and expired:
        logger.error(
            "Gave up storing the response of idempotency claim %s after %d attempts (%s): "
            "the record has expired, so a retry runs the view again.",
            held.key,
            attempts,
            problem,
        )
    elif problem is not None and attempts == 1:  # once: an outage would flood the log
        logger.error(
            "Could not store the response of idempotency claim %s (%s); retrying in the "
            "background until it is stored. Until then the key answers 'in use'.",
            held.key,
            problem,
        )
    if problem is None or expired:
        return True
    if not background:
        renewer.forget(held)
        retrier.hold(held)
    return False


_pending = threading.local()


def open_atomic_blocks() -> list[BaseDatabaseWrapper]:
    """The connections of this thread inside an atomic block that may commit:
    not only a ``TestCase``'s, which never does."""
    return [
        connection
        for connection in connections.all(initialized_only=True)
        if connection.in_atomic_block
        and not all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    ]


class AwaitingCommit:
    """A completion that waits for the commit of the view's transactions on
    ``open_on``. Django drops ``on_commit`` callbacks when a transaction rolls
    back or its commit fails: one that neither ran nor is still queued when the
    request finishes means the writes are gone, and ``release`` frees the key."""

    def __init__(
        self,
        held: Held,
        completion: tuple[bytes, int, float],
        open_on: list[BaseDatabaseWrapper],
        release: Callable[[], None],
    ) -> None:
        self.held = held
        self.completion = completion
        self.release = release
        self.callbacks: dict[str, Any] = {}
        for connection in open_on:
            callback = functools.partial(self.committed, connection.alias)
            self.callbacks[connection.alias] = callback
            transaction.on_commit(callback, using=connection.alias, robust=True)
        self.waiting = set(self.callbacks)
        if not hasattr(_pending, "list"):
            _pending.list = []
        _pending.list.append(self)

    def committed(self, alias: str) -> None:
        self.waiting.discard(alias)
        if not self.waiting:
            start_completion(self.held, *self.completion)

    def request_finished(self) -> None:
        if not self.waiting or self.held.done:
            return
        queued = {
            alias
            for alias in self.waiting
            if any(entry[1] is self.callbacks[alias] for entry in connections[alias].run_on_commit)
        }
        if queued:
            # Still open past the request (a transaction around the test
            # client): the callback stores it if it commits, and the claim
            # lapses with its lease if it does not.
            renewer.forget(self.held)
            return
        logger.warning(
            "The transaction of idempotency claim %s did not commit; the claim is released "
            "so that a retry runs the view again.",
            self.held.key,
        )
        self.release()


def _on_request_finished(**kwargs: Any) -> None:
    pending: list[AwaitingCommit] = getattr(_pending, "list", [])
    _pending.list = []
    for one in pending:
        try:
            one.request_finished()
        except Exception:
            logger.exception("Ending idempotency claim %s failed", one.held.key)


request_finished.connect(_on_request_finished, dispatch_uid="django_idempotency.stores.redis")
