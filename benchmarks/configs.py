"""The configurations that the benchmarks compare, shared by bench_http.py and count_queries.py."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    server: str  # BENCH_SERVER of the gunicorn that serves it (see benchproject/settings.py)
    path: str
    mode: str  # "first": a new key per request; "replay": one primed key per wrk thread
    needs: str | None = None  # a module that must import, else the config is skipped
    scoped: bool = True  # keys scoped per user
    peer: bool = False

    def missing(self) -> str | None:
        """Why this configuration cannot run here, or None."""
        if self.needs is None:
            return None
        try:
            found = importlib.util.find_spec(self.needs) is not None
        except ModuleNotFoundError:
            found = False
        return None if found else f"{self.needs} is not importable"


BASELINE = Config("baseline", "undecorated view", "db", "/baseline/", "first")
CONFIGS = [
    BASELINE,
    Config(
        "baseline-atomic", "undecorated view in a transaction (reference)", "db",
        "/baseline-atomic/", "first",
    ),
    Config("ours-db-first", "@idempotent, database, first", "db", "/ours/", "first"),
    Config("ours-db-replay", "@idempotent, database, replay", "db", "/ours/", "replay"),
    Config(
        "ours-redis-first", "@idempotent, Redis, first", "redis", "/ours/", "first",
        needs="django_idempotency.stores.cache",
    ),
    Config(
        "ours-redis-replay", "@idempotent, Redis, replay", "redis", "/ours/", "replay",
        needs="django_idempotency.stores.cache",
    ),
    Config(
        "drfi-db-first", "drf-idempotency middleware, database, first", "drfi-db",
        "/baseline/", "first", needs="drf_idempotency", scoped=False, peer=True,
    ),
    Config(
        "drfi-db-replay", "drf-idempotency middleware, database, replay", "drfi-db",
        "/baseline/", "replay", needs="drf_idempotency", scoped=False, peer=True,
    ),
    Config(
        "drfi-redis-first", "drf-idempotency middleware, Redis, first", "drfi-redis",
        "/baseline/", "first", needs="drf_idempotency", scoped=False, peer=True,
    ),
    Config(
        "drfi-redis-replay", "drf-idempotency middleware, Redis, replay", "drfi-redis",
        "/baseline/", "replay", needs="drf_idempotency", scoped=False, peer=True,
    ),
    Config(
        "dik-db-first", "drf-idempotencykey mixin, database, first", "db",
        "/drf-idempotencykey/", "first", needs="drf_idempotencykey", peer=True,
    ),
    Config(
        "dik-db-replay", "drf-idempotencykey mixin, database, replay", "db",
        "/drf-idempotencykey/", "replay", needs="drf_idempotencykey", peer=True,
    ),
]

# The request every configuration serves: same body, same auth.
BODY = '{"sku": "abc-123", "quantity": 2, "note": "benchmark order"}'
USERS = ["bench-0", "bench-1", "bench-2", "bench-3"]


def replay_key(run_id: str, thread: int) -> str:
    """The key that wrk thread ``thread`` repeats; a UUID, as drf-idempotencykey requires."""
    return f"{run_id}-{thread:04x}-4000-8000-000000000000"


def first_key(run_id: str, thread: int, counter: int) -> str:
    """What bench.lua sends as the counter-th new key of a thread (the same format)."""
    return f"{run_id}-{thread:04x}-4000-8000-{counter:012x}"
