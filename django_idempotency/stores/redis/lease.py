"""What a claim holds while its view runs, and the two background threads of
each process: one renews the leases of running claims, the other retries the
completions that Redis refused until the response is stored."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
    retries their completions. Two of them, so that retries waiting on a
    server that is down never delay the renewal of healthy claims."""

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
