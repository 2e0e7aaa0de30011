"""Step conditions, compiled once when a graph loads.

A condition starting with ``$`` is JSONPath (jsonpath-ng's extended grammar, so filters such as
``$.predictions[?(@.label == "dog")]`` work) and matches when it selects at least one value.
Any other condition is a GJSON path, with KServe's meaning: the body is valid JSON and the path
exists in it (``null`` and ``false`` values exist). An empty condition never matches.

Go's gjson reads the body's bytes as they are, so a body with bytes that are not UTF-8 inside
its strings is valid and its paths exist as usual; pygjson needs text, so such a body is read as
the text Go sees (``Payload.gjson_text``: one U+FFFD per stray byte). A condition that cannot be
evaluated on a body gjson calls valid (a JSONPath condition on a body that cannot be decoded,
such as one that is not UTF-8; a JSONPath selection too deep to walk) raises ``Unevaluable``
with the reason; the router type decides whose fault that is.
"""

from __future__ import annotations

from typing import Any, Protocol

import pygjson
from jsonpath_ng.ext.parser import parse as parse_jsonpath

from infergraph.router.engine import jsontext
from infergraph.router.engine.payload import NotJSON, Payload

# The deepest body a GJSON condition reads (``Payload.shallow``): the @valid modifier validates
# recursively on the native stack, and gjson's time grows with the square of the depth walked
# (a path it does not find in a chain of 100,000 levels took 20 s).
GJSON_DEPTH = jsontext.NATIVE_DEPTH


class ConditionSyntaxError(ValueError):
    """A condition that cannot be compiled."""


class Unevaluable(ValueError):
    """A condition that cannot be evaluated on a body (which gjson calls valid JSON)."""


class Condition(Protocol):
    source: str

    def matches(self, body: Payload) -> bool: ...


class GJSONCondition:
    """A GJSON path, as KServe evaluates conditions."""

    __slots__ = ("_path", "source")

    def __init__(self, source: str) -> None:
        _check_gjson_syntax(source)
        try:
            self._path = pygjson.compile(source)
        except Exception as exc:  # a lone surrogate (UnicodeEncodeError), or worse
            raise ConditionSyntaxError(f"GJSON path {source!r} does not compile: {exc}") from exc
        self.source = source

    def matches(self, body: Payload) -> bool:
        if not body.is_json():
            return False
        if not body.shallow():
            raise Unevaluable(
                f"the body nests over {GJSON_DEPTH} levels deep, too deep for the GJSON "
                f"condition {self.source!r}"
            )
        try:
            result = pygjson.get_bytes(body.raw, self._path)
        except UnicodeDecodeError:
            result = pygjson.get(body.gjson_text(), self._path)
        return bool(result.exists())

    def __repr__(self) -> str:
        return f"GJSONCondition({self.source!r})"


class JSONPathCondition:
    """A JSONPath expression; matches when it selects at least one value."""

    __slots__ = ("_expr", "source")

    def __init__(self, source: str) -> None:
        try:
            self._expr: Any = parse_jsonpath(source)
        except Exception as exc:  # jsonpath-ng raises JSONPathError and, rarely, others
            raise ConditionSyntaxError(f"JSONPath {source!r} does not parse: {exc}") from exc
        self.source = source

    def matches(self, body: Payload) -> bool:
        if not body.is_json():
            return False
        try:
            document = body.json()
        except NotJSON as exc:
            raise Unevaluable(
                f"{exc}, so the JSONPath condition {self.source!r} cannot be read"
            ) from exc
        try:
            return bool(self._expr.find(document))
        except RecursionError as exc:
            raise Unevaluable(
                f"the body nests too deeply for the JSONPath condition {self.source!r}"
            ) from exc
        except Exception:
            # A filter comparing values of different types (e.g. "a" > 1) selects nothing.
            return False

    def __repr__(self) -> str:
        return f"JSONPathCondition({self.source!r})"


class NeverMatches:
    """KServe's meaning of an empty condition on a Switch step."""

    __slots__ = ("source",)

    def __init__(self) -> None:
        self.source = ""

    def matches(self, body: Payload) -> bool:
        return False


def compile_condition(source: str) -> Condition:
    """Compile a condition string; raises ``ConditionSyntaxError`` when it does not parse."""
    if not source:
        return NeverMatches()
    if source.startswith("$"):
        return JSONPathCondition(source)
    return GJSONCondition(source)


_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _check_gjson_syntax(path: str) -> None:
    """Reject GJSON paths with unbalanced brackets or unterminated strings.

    gjson itself never refuses a path (a broken one just never exists), so without this check a
    typo would silently turn a route off.
    """
    stack: list[str] = []
    quote = False
    escaped = False
    for position, char in enumerate(path):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            quote = char != '"'
        elif char == '"':
            quote = True
        elif char in "([{":
            stack.append(char)
        elif char in _CLOSERS and (not stack or stack.pop() != _CLOSERS[char]):
            raise ConditionSyntaxError(
                f"GJSON path {path!r} has an unmatched {char!r} at position {position}"
            )
    if quote:
        raise ConditionSyntaxError(f"GJSON path {path!r} has an unterminated string")
    if stack:
        raise ConditionSyntaxError(f"GJSON path {path!r} has an unclosed {stack[-1]!r}")
    if path.endswith((".", "|")):
        raise ConditionSyntaxError(f"GJSON path {path!r} ends with {path[-1]!r}")
