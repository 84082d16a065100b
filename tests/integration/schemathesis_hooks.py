"""Schemathesis hooks for tests/integration/test_schemathesis.py (``SCHEMATHESIS_HOOKS``).

With ``FUZZ_FRESH_KEYS=1`` every request that carries a schema-valid
Idempotency-Key gets a new, unique one instead, as a real client makes one key
per operation. Keys that are invalid on purpose (schemathesis's negative cases)
and requests without the header (its missing-header check) are left alone.
Without it, schemathesis's own generated keys go out, and repeat: replays and
conflicts are then part of what is checked.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import schemathesis

HEADER = "idempotency-key"


def _rule(case: Any) -> tuple[re.Pattern[str], int] | None:
    for parameter in case.operation.headers:
        definition = getattr(parameter, "definition", {})
        if str(definition.get("name", "")).lower() == HEADER:
            schema = definition.get("schema", {})
            return re.compile(schema.get("pattern", ".*")), int(schema.get("maxLength", 255))
    return None


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if os.environ.get("FUZZ_FRESH_KEYS") != "1" or not case.headers:
        return
    name = next((n for n in case.headers if n.lower() == HEADER), None)
    rule = _rule(case)
    if name is None or rule is None:
        return
    value = case.headers[name]
    pattern, max_length = rule
    if isinstance(value, str) and len(value) <= max_length and pattern.fullmatch(value):
        case.headers[name] = f"fuzz-{uuid.uuid4()}"
