"""The store's Lua scripts and how they run: by SHA, within the request's time
budget (``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET``), and, when replicas must
acknowledge a write, with ``WAIT`` on the connection that wrote.

Each script touches one key, so each runs on the node that owns the record's
slot (Redis Cluster); the in-flight value is the claim's owner token.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from redis.backoff import AbstractBackoff
from redis.exceptions import NoScriptError, RedisError

from ...conf import conf


def setting_seconds(name: str) -> float:
    """A duration setting (seconds or a timedelta) in seconds."""
    value = conf.raw(name)
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def timeout_budget() -> float:
    return setting_seconds("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET")


def min_replicas() -> int:
    return int(conf.raw("IDEMPOTENCY_REDIS_MIN_REPLICAS"))


# The thread's deadline (monotonic) while it spends a budget, read before each
# Redis call and by BudgetBackoff between the retries of redis-py's cluster client.
_deadline = threading.local()


class BudgetExceeded(RedisError):
    """``IDEMPOTENCY_REDIS_TIMEOUT_BUDGET`` ran out before Redis answered.

    A ``RedisError`` that redis-py does not retry: it ends its retry loops."""


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """The Redis calls of this thread, redis-py's retries included, end within ``seconds``."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = previous


def _left() -> float | None:
    at: float | None = getattr(_deadline, "at", None)
    return None if at is None else at - time.monotonic()


def check_budget() -> None:
    left = _left()
    if left is not None and left <= 0:
        raise BudgetExceeded("IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ran out before Redis answered")


class BudgetBackoff(AbstractBackoff):
    """A redis-py backoff that ends the retries instead of sleeping past the
    thread's deadline (:func:`within`), since socket timeouts do not bound a
    retry loop. Without a deadline it is the backoff it wraps."""

    def __init__(self, inner: AbstractBackoff) -> None:
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()  # type: ignore[no-untyped-call]

    def compute(self, failures: int) -> float:
        delay = float(self.inner.compute(failures))
        left = _left()
        if left is not None and delay >= left:
            # The next attempt could only start at the deadline: give up now.
            raise BudgetExceeded(
                f"IDEMPOTENCY_REDIS_TIMEOUT_BUDGET ran out after {failures} failed attempts"
            )
        return delay


class Script:
    """A Lua script on one key, run by SHA (the source when the server lacks it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, key: str, *args: Any) -> Any:
        check_budget()
        try:
            return client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            check_budget()
            return client.eval(self.source, 1, key, *args)

    def write(self, client: Any, key: str, args: tuple[Any, ...], replicas: int) -> tuple[Any, int]:
        """Run the script; with ``replicas``, then ``WAIT`` for them in one
        pipeline, so on the connection that wrote. Its result and how many
        replicas acknowledged (0 when none were asked for)."""
        if not replicas:
            return self(client, key, *args), 0
        timeout_ms = max(1, round(setting_seconds("IDEMPOTENCY_REDIS_WAIT_TIMEOUT") * 1000))
        for _ in range(2):
            check_budget()
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(self.sha, 1, key, *args)
            pipe.wait(replicas, timeout_ms)  # at least 1 ms: WAIT 0 waits forever
            try:
                result, acknowledged = pipe.execute()
            except NoScriptError:  # a new primary after a failover, or a restart
                client.script_load(self.source)
                continue
            return result, int(acknowledged)
        raise NoScriptError(f"script {self.sha} could not be loaded")


# An in-flight value lives LAPSE_MEMORY_MS past its lease, so that the request
# that takes a lapsed claim over knows it did (and logs it); the lease has
# lapsed once the key's PTTL is at most LAPSE_MEMORY_MS.
LAPSE_MEMORY_MS = 3_600_000

# ARGV: in-flight value, lease ms + LAPSE_MEMORY_MS, LAPSE_MEMORY_MS. Returns
# nil if claimed; {value found} if the key holds a record; {value found, ms
# past its lease} if it held a lapsed claim, now ours.
CLAIM = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local current = redis.call('GET', KEYS[1])
if string.sub(current, 1, 20) == '{"state":"in_flight"' then
    local left = redis.call('PTTL', KEYS[1])
    if left >= 0 and left <= tonumber(ARGV[3]) then
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return {current, tonumber(ARGV[3]) - left}
    end
end
return {current}
"""
)
# ARGV: our in-flight value, the completed value, its TTL in ms. Returns 1 if
# stored, or already stored by an earlier attempt of this completion (a retry
# is safe). A key that is gone (our lease lapsed, nobody took it over) is ours
# to fill: no other request can have run meanwhile.
FINISH = Script(
    """
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then return 1 end
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: the value expected, its replacement, the replacement's TTL in ms.
# Returns 1 if replaced: a release (our in-flight value by a released one) or
# the take-over of a released attempt (the released value by our in-flight one).
REPLACE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: our in-flight value. Returns 1 if the claim was ours and is gone.
DELETE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
)
# ARGV: our in-flight value, lease ms + LAPSE_MEMORY_MS. Returns 1 if the claim
# is (again) ours: a lapsed key that nobody took over is claimed again, which
# also restores a claim that Redis lost (a restart without persistence, a failover).
RENEW = Script(
    """
local current = redis.call('GET', KEYS[1])
if not current then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
if current ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
)
