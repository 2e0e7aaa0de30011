"""Condition semantics (GJSON as KServe, JSONPath) and PROPAGATE_HEADERS matching."""

from __future__ import annotations

import pytest

from infergraph.router.engine.conditions import ConditionSyntaxError, compile_condition
from infergraph.router.engine.headers import HeaderPolicy, canonical_name
from infergraph.router.engine.payload import Payload

BODY = b'{"instances":[{"modelId":"2"}],"decision_picker":"ERROR","n":null,"f":false,"predictions":[{"label":"dog","score":0.9}]}'

MATCHES = [
    ('instances.#(modelId=="2")', True),
    ('instances.#(modelId=="1")', False),
    ("[@this].#(decision_picker==ERROR)", True),
    ("[@this].#(decision_picker==OK)", False),
    ("n", True),  # JSON null exists
    ("f", True),  # JSON false exists
    ("missing", False),
    ("$.predictions[?(@.label == 'dog')]", True),
    ("$.predictions[?(@.score > 0.95)]", False),
    ("$.n", True),
    ("$.missing", False),
    ("", False),
]


@pytest.mark.parametrize(("condition", "expected"), MATCHES)
def test_condition_matches(condition: str, expected: bool) -> None:
    assert compile_condition(condition).matches(Payload(BODY)) is expected


@pytest.mark.parametrize("condition", ["instances", "$.instances"])
@pytest.mark.parametrize("raw", [b"not json", b"", b'{"instances": [1]'])
def test_non_json_never_matches(condition: str, raw: bytes) -> None:
    assert compile_condition(condition).matches(Payload(raw)) is False


@pytest.mark.parametrize("condition", ["$.a[", "$[?(@.x ==", "a.#(b==1", 'a.#(b=="1)', "a)", "a."])
def test_conditions_that_do_not_parse(condition: str) -> None:
    with pytest.raises(ConditionSyntaxError):
        compile_condition(condition)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("x-request-id", "X-Request-Id"),
        ("TEST-HEADER-KEY", "Test-Header-Key"),
        ("auth", "Auth"),
        ("a b", "a b"),
    ],
)
def test_canonical_names(raw: str, canonical: str) -> None:
    assert canonical_name(raw) == canonical


INCOMING = [
    ("test-header-key", "1"),
    ("Test-Header-Other", "2"),
    ("Authorization", "Bearer t"),
    ("X-Unrelated", "3"),
    ("Connection", "keep-alive"),
    ("Content-Length", "10"),
]


@pytest.mark.parametrize(
    ("setting", "forwarded"),
    [
        (None, []),
        ("Test-Header-Key", ["Test-Header-Key"]),
        ("Test-Header-Key,Authorization", ["Test-Header-Key", "Authorization"]),
        ("Test-Header-*,Auth*", ["Test-Header-Key", "Test-Header-Other", "Authorization"]),
        ("Header", ["Test-Header-Key", "Test-Header-Other"]),  # unanchored
        ("test-header", []),  # case-sensitive on the canonical name
        ("[invalid,Auth*", ["Authorization"]),  # the broken pattern is skipped
        ("", ["Test-Header-Key", "Test-Header-Other", "Authorization", "X-Unrelated"]),
    ],
)
def test_header_propagation(setting: str | None, forwarded: list[str]) -> None:
    headers = HeaderPolicy.from_setting(setting).forward(INCOMING)
    names = [name for name, _ in headers]
    assert names == [*forwarded, "Content-Type"]
    assert ("Content-Type", "application/json") in headers


def test_invalid_pattern_is_reported() -> None:
    assert len(HeaderPolicy.from_setting("[invalid,ok").rejected) == 1


def test_propagated_content_type_is_kept() -> None:
    headers = HeaderPolicy.from_setting("Content-Type").forward([("content-type", "text/plain")])
    assert headers == (("Content-Type", "text/plain"),)
