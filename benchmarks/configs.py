"""The configurations that the benchmarks compare, shared by bench_http.py and count_queries.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    # The baseline that this configuration's ratio is measured against (and that
    # runs between its runs); a baseline names itself.
    baseline: str = "baseline"
    # How requests authenticate: "bearer" (benchproject.auth, no SQL) or "token"
    # (DRF's TokenAuthentication, one SELECT per request).
    auth: str = "bearer"
    reference: bool = False  # a reference point: neither a peer nor a target

    @property
    def is_baseline(self) -> bool:
        return self.baseline == self.name

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
BASELINE_TOKEN = Config(
    "baseline-token",
    "undecorated view, TokenAuthentication",
    "db",
    "/baseline-token/",
    "first",
    baseline="baseline-token",
    auth="token",
)
CONFIGS = [
    BASELINE,
    Config(
        "baseline-atomic",
        "undecorated view in a transaction (reference)",
        "db",
        "/baseline-atomic/",
        "first",
        reference=True,
    ),
    Config(
        "floor-db",
        "undecorated view in a transaction + 2 trivial statements "
        "(reference: round-trip floor of the database store)",
        "db",
        "/floor-db/",
        "first",
        reference=True,
    ),
    Config(
        "floor-db-writes",
        "undecorated view in a transaction + the store's INSERT and UPDATE as plain SQL "
        "(reference: floor of a store that keeps its record in the view's transaction)",
        "db",
        "/floor-db-writes/",
        "first",
        reference=True,
    ),
    Config(
        "floor-db-insert",
        "undecorated view in a transaction + a trivial statement + one INSERT of a record "
        "as plain SQL (reference: floor of a store that claims without writing and keeps "
        "its record with one write in the view's transaction)",
        "db",
        "/floor-db-insert/",
        "first",
        reference=True,
    ),
    Config(
        "floor-redis",
        "undecorated view + 2 trivial Redis round trips "
        "(reference: round-trip floor of a Redis store)",
        "redis",
        "/floor-redis/",
        "first",
        needs="django_redis",
        reference=True,
    ),
    Config("ours-db-first", "@idempotent, database, first", "db", "/ours/", "first"),
    Config("ours-db-replay", "@idempotent, database, replay", "db", "/ours/", "replay"),
    Config(
        "ours-db-first-write-first",
        "@idempotent, database, first, claim that writes first (reference: the design before "
        "migration 0005, an INSERT at the claim and an UPDATE at the end)",
        "db-write-first",
        "/ours/",
        "first",
        reference=True,
    ),
    Config(
        "ours-redis-first",
        "@idempotent, Redis, first",
        "redis",
        "/ours/",
        "first",
        needs="django_idempotency.stores.redis",
    ),
    Config(
        "ours-redis-replay",
        "@idempotent, Redis, replay",
        "redis",
        "/ours/",
        "replay",
        needs="django_idempotency.stores.redis",
    ),
    Config(
        "drfi-db-first",
        "drf-idempotency middleware, database, first",
        "drfi-db",
        "/baseline/",
        "first",
        needs="drf_idempotency",
        scoped=False,
        peer=True,
    ),
    Config(
        "drfi-db-replay",
        "drf-idempotency middleware, database, replay",
        "drfi-db",
        "/baseline/",
        "replay",
        needs="drf_idempotency",
        scoped=False,
        peer=True,
    ),
    Config(
        "drfi-redis-first",
        "drf-idempotency middleware, Redis, first",
        "drfi-redis",
        "/baseline/",
        "first",
        needs="drf_idempotency",
        scoped=False,
        peer=True,
    ),
    Config(
        "drfi-redis-replay",
        "drf-idempotency middleware, Redis, replay",
        "drfi-redis",
        "/baseline/",
        "replay",
        needs="drf_idempotency",
        scoped=False,
        peer=True,
    ),
    Config(
        "dik-db-first",
        "drf-idempotencykey mixin, database, first",
        "db",
        "/drf-idempotencykey/",
        "first",
        needs="drf_idempotencykey",
        peer=True,
    ),
    Config(
        "dik-db-replay",
        "drf-idempotencykey mixin, database, replay",
        "db",
        "/drf-idempotencykey/",
        "replay",
        needs="drf_idempotencykey",
        peer=True,
    ),
    # The same, authenticated by DRF's TokenAuthentication (one SELECT joined to
    # the user per request, as most APIs authenticate) instead of the cheap
    # bearer: measured against baseline-token, in runs of their own.
    BASELINE_TOKEN,
    Config(
        "ours-db-first-token",
        "@idempotent, database, first, TokenAuthentication",
        "db",
        "/ours-token/",
        "first",
        baseline="baseline-token",
        auth="token",
    ),
    Config(
        "ours-db-replay-token",
        "@idempotent, database, replay, TokenAuthentication",
        "db",
        "/ours-token/",
        "replay",
        baseline="baseline-token",
        auth="token",
    ),
    Config(
        "ours-redis-first-token",
        "@idempotent, Redis, first, TokenAuthentication",
        "redis",
        "/ours-token/",
        "first",
        needs="django_idempotency.stores.redis",
        baseline="baseline-token",
        auth="token",
    ),
]
BY_NAME = {config.name: config for config in CONFIGS}

# The request every configuration serves: the same body; the auth of its Config.auth.
BODY = '{"sku": "abc-123", "quantity": 2, "note": "benchmark order"}'
USERS = ["bench-0", "bench-1", "bench-2", "bench-3"]


def token_key(user: str) -> str:
    """The DRF authtoken key of a bench user: deterministic, 40 hex digits like DRF's own."""
    seed = f"django-idempotency-bench:{user}".encode()
    return hashlib.sha1(seed, usedforsecurity=False).hexdigest()


def credentials(config: Config) -> tuple[str, list[str]]:
    """The Authorization scheme of ``config`` and one credential per user, in USERS' order."""
    if config.auth == "token":
        return "Token", [token_key(user) for user in USERS]
    return "Bearer", list(USERS)


def authorization(config: Config, user: str) -> str:
    """The Authorization header that ``user`` sends to ``config``."""
    scheme, values = credentials(config)
    return f"{scheme} {values[USERS.index(user)]}"


def replay_key(run_id: str, thread: int) -> str:
    """The key that wrk thread ``thread`` repeats; a UUID, as drf-idempotencykey requires."""
    return f"{run_id}-{thread:04x}-4000-8000-000000000000"


def first_key(run_id: str, thread: int, counter: int) -> str:
    """What bench.lua sends as the counter-th new key of a thread (the same format)."""
    return f"{run_id}-{thread:04x}-4000-8000-{counter:012x}"


def write_json(data: Any, out: Path | None) -> None:
    """A part's result: to ``out`` (for report.py), or to standard output."""
    text = json.dumps(data, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    else:
        print(text)
