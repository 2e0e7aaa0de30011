"""jsontext: Go's reading of JSON bytes, safe at any depth, with orjson as the fast path."""

from __future__ import annotations

from typing import Any

import orjson
import pygjson
import pytest

from infergraph.router.engine import jsontext
from infergraph.router.engine.jsontext import EncodeError, NotJSON, TooDeep


def nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


def deep_list(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain", "plain"),
        (b"caf\xc3\xa9", "caf\u00e9"),
        (b"\xff", "\ufffd"),
        (b"x\xe2\x82y", "x\ufffd\ufffdy"),  # a truncated 3-byte sequence: two stray bytes
        (b"\xed\xa0\x80", "\ufffd\ufffd\ufffd"),  # an encoded surrogate is three stray bytes
        (b"\xf0\x9f\x98\x80\x80", "\U0001f600\ufffd"),
    ],
)
def test_go_text_replaces_each_stray_byte(raw: bytes, text: str) -> None:
    assert jsontext.go_text(raw) == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'"\\ud800"', "\ufffd"),
        (b'"\\udc00"', "\ufffd"),
        (b'"\\ud83d\\ude00"', "\U0001f600"),
        (b'"\\ud800\\ud83d\\ude00"', "\ufffd\U0001f600"),  # a high surrogate before a pair
        (b'"\\ud800\\u0041"', "\ufffdA"),
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then text
        (b'"\\\\\\ud800"', "\\\ufffd"),
        (b'{"\\udfff":["\\uD800"]}', {"\ufffd": ["\ufffd"]}),
    ],
)
def test_lone_surrogate_escapes_decode_to_replacement_characters(raw: bytes, value: Any) -> None:
    assert jsontext.loads(raw) == value


def test_bytes_that_are_not_utf8_are_refused_or_replaced() -> None:
    raw = b'{"a":"\xff"}'
    with pytest.raises(NotJSON, match=r"not valid UTF-8 \(byte 0xff at offset 6\)") as caught:
        jsontext.loads(raw)
    assert caught.value.utf8
    assert jsontext.loads(raw, lossy_utf8=True) == {"a": "\ufffd"}
    with pytest.raises(NotJSON) as not_json:
        jsontext.loads(b'{"a":\xff}', lossy_utf8=True)  # outside a string it is not JSON
    assert not not_json.value.utf8


@pytest.mark.parametrize("levels", [1023, 1024, 5000, jsontext.MAX_DEPTH - 1])
def test_deep_documents_decode_and_encode(levels: int) -> None:
    raw = b'{"a":' + nested(levels) + b"}"
    document = jsontext.loads(raw)
    assert jsontext.dumps(document) == raw


def test_documents_deeper_than_max_depth_are_refused() -> None:
    raw = nested(jsontext.MAX_DEPTH + 1)
    with pytest.raises(TooDeep, match=f"nests {jsontext.MAX_DEPTH + 1} levels deep"):
        jsontext.loads(raw)
    with pytest.raises(TooDeep):
        jsontext.validate(raw)
    assert not jsontext.valid(raw)


def test_deep_decoding_keeps_orjsons_number_rules() -> None:
    numbers = b"[18446744073709551615,-9223372036854775808,18446744073709551616,1.5e3,-0,1E2]"
    raw = nested(1100, numbers)
    inner = jsontext.loads(raw)
    for _ in range(1100):
        inner = inner[0]
    assert inner == orjson.loads(numbers)
    assert [type(n) for n in inner] == [type(n) for n in orjson.loads(numbers)]
    with pytest.raises(NotJSON, match="out of range"):
        jsontext.loads(nested(1100, b"1e999"))


@pytest.mark.parametrize(
    "raw",
    [
        nested(20_000),
        b'{"a":' * 15_000 + b"null" + b"}" * 15_000,
        b'[{"k":"]]]}}}","v":' * 11_000 + b'"\\"["' + b"}]" * 11_000,
        b" \n" + nested(12_000, b'"x\xff"') + b"\t",
    ],
)
def test_the_iterative_validator_accepts_deep_json(raw: bytes) -> None:
    assert not jsontext.shallow(raw)
    assert jsontext.validate(raw)


@pytest.mark.parametrize(
    "raw",
    [
        nested(20_000)[:-1],
        nested(20_000) + b"]",
        b"[" * 20_000 + b"1}" + b"]" * 19_999,
        b"[" * 20_000 + b"1,]" + b"]" * 19_999,
        b'{"a":' * 15_000 + b"01" + b"}" * 15_000,
        b'{"a":' * 15_000 + b'"\x01"' + b"}" * 15_000,
        b'{"a" 1' + b"[" * 20_000,
        nested(20_000) + b" x",
    ],
)
def test_the_iterative_validator_refuses_deep_garbage(raw: bytes) -> None:
    assert not jsontext.shallow(raw)
    assert not jsontext.validate(raw)


@pytest.mark.parametrize(
    "raw",
    [b"", b" ", b"{}", b"[]", b"1", b"-", b"01", b"1.", b'"\\x"', b'"\x7f\xff"', b"[1,]", b"nul"],
)
def test_the_iterative_validator_agrees_with_pygjson(raw: bytes) -> None:
    assert jsontext._scan(raw, None) == pygjson.validate(raw)


@pytest.mark.parametrize(
    ("raw", "levels"),
    [
        (b"", 0),
        (b"1", 0),
        (b"[[1],[2,[3]]]", 3),
        (b'["[[[[[[", {"]]]]]": "{{{{"}]', 2),
        (b'["\\"[[[", "\\\\", [["\\\\\\"]"]]]', 3),
        (b'["unterminated [[[[', 1),
    ],
)
def test_nesting_is_a_bound_within_a_factor_of_two(raw: bytes, levels: int) -> None:
    assert levels <= jsontext.nesting(raw) <= 2 * levels
    assert jsontext.nesting(raw, exact=True) == levels


def test_nests_within_is_exact_where_the_bound_is_not() -> None:
    """Bodies whose quick bound overstates their depth (a wide tree of small pairs, where each
    pass removes two levels) against depths at, below and above their true one."""
    bodies = [
        nested(30, b"[" + b"[[1],[2]]," * 200 + b"[[3]]]"),  # 33 levels, bound above that
        b"[" + b"[[[1]]]," * 500 + b"1]",  # 4 levels
        nested(600),  # a chain: no overstatement
        b'{"a":' + nested(40) + b',"s":"' + b"[" * 5000 + b'"}',  # brackets in a string
    ]
    for raw in bodies:
        levels = jsontext.nesting(raw, exact=True)
        for depth in (0, 1, levels // 2, levels - 1, levels, levels + 1, 2 * levels, 10 * levels):
            assert jsontext.nests_within(raw, depth) == (levels <= depth), (raw[:40], depth)


def test_nesting_of_many_strings_with_quotes_is_linear() -> None:
    # A regular expression that rescanned from every quote would take minutes here.
    assert jsontext.nesting(b'"\\"' * 300_000) == 0


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        ({"a": "x\ud800y"}, '{"a":"x\ufffdy"}'.encode()),
        (
            [2**64, -(2**63) - 1, 10**30],
            b"[18446744073709551616,-9223372036854775809," + b"1" + b"0" * 30 + b"]",
        ),
        ((1, (2,)), b"[1,[2]]"),
        ({"\ud800": deep_list(300)}, '{"\ufffd":'.encode() + nested(300) + b"}"),
    ],
)
def test_dumps_writes_what_orjson_refuses(value: Any, raw: bytes) -> None:
    assert jsontext.dumps(value) == raw


@pytest.mark.parametrize(
    ("value", "message"),
    [({1: "a"}, "key must be a string"), (b"x", "a bytes is not a JSON value")],
)
def test_dumps_refuses_values_json_lacks(value: Any, message: str) -> None:
    for document in (value, [deep_list(300), value]):
        with pytest.raises(EncodeError, match=message):
            jsontext.dumps(document)
