"""The canonical form of JSON bodies is one fixed function of their content.

fingerprint.py keeps one JSON encoder for every request instead of building one per
call (as ``json.dumps`` with options does): these tests hold it to the bytes
that ``json.dumps`` gives, for any JSON value (key order, unicode, lone
surrogates, numbers), so that fingerprints stored before stay comparable.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from django_idempotency import fingerprint

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.characters(codec=None)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(codec=None)), children, max_size=4)
    ),
    max_leaves=20,
)


def reference(data: Any) -> bytes:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"json\n" + text.encode("utf-8", "surrogatepass")


@given(json_values)
def test_canonical_json_is_json_dumps_sorted_and_compact(data: Any) -> None:
    assert fingerprint.canonical_json(data) == reference(data)


@given(json_values)
def test_a_raw_body_and_its_parse_have_one_canonical_form(data: Any) -> None:
    body = json.dumps(data, indent=1).encode()
    if body.count(b"[") + body.count(b"{") > fingerprint.MAX_JSON_DEPTH:
        return
    assert fingerprint.canonical_body("application/json", body) == reference(json.loads(body))


def test_key_order_white_space_and_escapes_do_not_count() -> None:
    one = b'{"b": 1, "a": "\\u00e9", "n": 1.0}'
    other = '{"n":1.0,"a":"é","b":1}'.encode()
    assert fingerprint.canonical_body("application/json", one) == fingerprint.canonical_body(
        "application/json; charset=utf-8", other
    )
    assert (
        fingerprint.canonical_body("application/json", one)
        == b'json\n{"a":"\xc3\xa9","b":1,"n":1.0}'
    )
