"""JSON text as KServe's Go router reads it, safe for any body a client can send.

The engine reads JSON with two native libraries, and a client can reach the limits of both:

- ``pygjson`` (gjson.rs) validates recursively on the native stack, about 32 bytes a level:
  a body nested some 260,000 levels deep (a 520 KB request of ``[``) overflows an 8 MiB stack
  and kills the process. ``validate`` hands it only bodies at most ``NATIVE_DEPTH`` levels deep
  (``nesting`` bounds that at about the speed of ``bytes.replace``) and checks deeper ones with
  an iterative scanner of the same grammar (Go's ``gjson.Valid``: RFC 8259 syntax, bytes inside
  strings not checked as UTF-8).
- ``pygjson`` evaluates paths on ``str``, so it raises on invalid UTF-8, where Go's gjson reads
  the bytes as they are. ``go_text`` is the text Go sees: one U+FFFD for each byte that is not
  UTF-8, as Go's ``utf8.DecodeRune`` (and ``encoding/json``) count them.
- ``orjson`` decodes at most 1024 levels, encodes about 254, and refuses lone surrogate escapes
  (``"\\ud800"``); Go's ``encoding/json`` decodes 10,000 levels and turns a lone surrogate into
  U+FFFD. ``loads`` and ``dumps`` use orjson and fall back to iterative Python code (no
  recursion, so Python's recursion limit is never met) only for documents orjson refuses.

Bodies nested deeper than ``MAX_DEPTH`` are refused (``TooDeep``): the iterative code costs
about 0.2 us a token, and only an attack sends JSON that deep. Everything here is pure
computation on bytes; failures are ``NotJSON`` (``TooDeep``) or ``EncodeError`` with the
reason, nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import orjson
import pygjson

# pygjson recurses on the native stack; 10,000 levels take about 320 KiB of it.
NATIVE_DEPTH = 10_000
# The deepest body read at all (Go's encoding/json stops at 10,000). It bounds the iterative
# code's work on a pathological body, and its Python objects to about the body's size.
MAX_DEPTH = 100_000
# orjson decodes 1024 levels; below this bound a refusal is not about depth.
_ORJSON_DECODE_DEPTH = 1000


class NotJSON(ValueError):
    """The body is not a JSON document the engine can read; the message says why.

    ``utf8`` is true when the only thing wrong is bytes that are not UTF-8 inside strings
    (Go's readers accept those, replacing each such byte with U+FFFD).
    """

    def __init__(self, reason: str, *, utf8: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.utf8 = utf8


class TooDeep(NotJSON):
    """The body nests deeper than ``MAX_DEPTH`` levels: the engine does not read it."""

    def __init__(self, levels: int) -> None:
        super().__init__(
            f"the body nests {levels} levels deep; the router reads JSON nested at most "
            f"{MAX_DEPTH} levels deep"
        )
        self.levels = levels


class EncodeError(ValueError):
    """A value that cannot be written as JSON (a type JSON lacks, or an integer too long)."""


# --- nesting -----------------------------------------------------------------------------------

# The closing quote is optional, so an unterminated string runs to the end in one match (no
# rescans from every later quote, which would be quadratic).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_SKELETON = bytes(b for b in range(256) if b not in b'"[]{}')
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_PASSES = 64


def _skeleton(raw: bytes) -> bytes:
    """The quotes and brackets of ``raw``, escapes gone first (an escaped backslash, then an
    escaped quote, as JSON pairs them left to right): a string is then its two quotes with the
    brackets it holds between them."""
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    return text.translate(None, _NOT_SKELETON)


def _structure(raw: bytes, skeleton: bytes) -> bytes:
    """The structural brackets of ``raw``, those inside strings left out.

    If no string holds a bracket, every string is an adjacent pair of quotes in the skeleton:
    then counting the pairs from the left (as ``bytes.count`` does) accounts for every quote,
    and the quotes can simply go. Otherwise (a bracket inside a string, an unterminated string)
    a regular expression skips the strings.
    """
    quotes = skeleton.count(b'"')
    if not quotes:
        return skeleton
    if 2 * skeleton.count(b'""') == quotes:
        return skeleton.translate(None, b'"')
    return _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)


def nesting(raw: bytes, *, exact: bool = False) -> int:
    """An upper bound on how many containers deep ``raw`` nests (brackets in strings do not
    count), exact to within a factor of 2.

    For text that is not JSON the bound holds up to the first syntax error, which is as far as
    any validator reads. Each pass removes the innermost empty pairs (a level or two of every
    branch) at the speed of ``bytes.replace``; what is left when passes stop paying off (or after
    ``_PASSES``) is counted. With ``exact``, everything is counted (no factor of 2).
    """
    return _nesting(_structure(raw, _skeleton(raw)), exact)


def _nesting(brackets: bytes, exact: bool) -> int:
    passes = 0
    while brackets and passes < _PASSES and not exact:
        reduced = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(reduced) * 10 > len(brackets) * 9:
            break  # a deep chain: counting beats removing a pair a pass
        brackets = reduced
        passes += 1
    if not brackets:
        return 2 * passes
    return 2 * passes + max(accumulate(map(_STEP.__getitem__, brackets), initial=0))


def shallow(raw: bytes) -> bool:
    """Whether ``raw`` nests at most ``NATIVE_DEPTH`` levels (cheap for nearly every body)."""
    return nests_within(raw, NATIVE_DEPTH)


def nests_within(raw: bytes, depth: int) -> bool:
    """Whether ``raw`` nests at most ``depth`` levels, exactly (cheap for nearly every body:
    the count only where the bound of ``nesting`` cannot settle it)."""
    if len(raw) <= depth:
        return True
    skeleton = _skeleton(raw)
    if skeleton.count(b"[") + skeleton.count(b"{") <= depth:
        return True
    brackets = _structure(raw, skeleton)
    bound = _nesting(brackets, exact=False)  # at least the depth, at most twice it
    if bound <= depth or bound > 2 * depth:
        return bound <= depth
    return _nesting(brackets, exact=True) <= depth


# --- Go's view of bytes that are not UTF-8 -----------------------------------------------------

_ESCAPED_BYTES = {0xDC80 + b: 0xFFFD for b in range(128)}


def go_text(raw: bytes) -> str:
    """``raw`` as text, each byte that is not part of a UTF-8 sequence replaced by U+FFFD.

    That is Go's reading: ``utf8.DecodeRune`` returns ``RuneError`` of width 1 for each such
    byte, gjson's pattern matcher sees one rune per byte and ``encoding/json`` writes one
    U+FFFD per byte (Python's ``errors="replace"`` would merge a truncated sequence into one).
    """
    return raw.decode("utf-8", "surrogateescape").translate(_ESCAPED_BYTES)


def utf8_error(raw: bytes) -> str | None:
    """Where ``raw`` stops being UTF-8, or None when it is UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    return None


# A lone UTF-16 surrogate escape (high without low, or low alone) becomes \ufffd, as Go's
# encoding/json decodes it; pairs, other escapes and escaped backslashes pass unchanged.
_ESCAPE = re.compile(
    rb"\\u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|([dD][89a-fA-F][0-9a-fA-F]{2})|[0-9a-fA-F]{4})|\\.",
    re.DOTALL,
)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.DOTALL)


def _lone_surrogate(match: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if match.group(1) is not None else match.group(0)


def _fix_surrogates(raw: bytes) -> bytes:
    if not _SURROGATE_ESCAPE.search(raw):
        return raw
    return _ESCAPE.sub(_lone_surrogate, raw)


# --- validating and decoding deep documents ----------------------------------------------------

_WS = b" \t\n\r"
_TOKEN = re.compile(
    rb"[ \t\n\r]*(?:"
    rb"(\[+)"  # 1: a run of array openings
    rb"|(\{)"  # 2
    rb"|([\]}]+)"  # 3: a run of closings
    rb"|(,)"  # 4
    rb"|(:)"  # 5
    rb'|("[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*")'  # 6
    rb"|(-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)"  # 7 number, 8 fraction, 9 exponent
    rb"|(true|false|null)"  # 10
    rb")"
)
_OPENERS = bytes.maketrans(b"]}", b"[{")
_LITERALS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


# Token groups of _TOKEN.
_ARRAYS, _OBJECT, _CLOSE, _COMMA, _COLON, _STR, _NUM, _FRAC, _EXP, _LIT = range(1, 11)
# What may come next.
_VALUE = 0  # a value (top level, after ":" or after "," in an array)
_VALUE_OR_END = 1  # just after "["
_KEY_OR_END = 2  # just after "{"
_KEY = 3  # after "," in an object
_COLON_NEXT = 4  # after a key
_AFTER = 5  # after a value
_VALUES = (_VALUE, _VALUE_OR_END)
_KEYS = (_KEY, _KEY_OR_END)
# Where a closing may come: after a value, or closing the container just opened (its type is
# checked with the others: the innermost open container must match the first closing).
_CLOSABLE = (_AFTER, _VALUE_OR_END, _KEY_OR_END)
_BRACE = ord("{")

_INVALID = object()


def _string(token: bytes) -> str:
    if b"\\" not in token:
        return token[1:-1].decode("utf-8")
    value = orjson.loads(token)  # one string: orjson unescapes it
    assert isinstance(value, str)
    return value


def _number(token: bytes, fraction: bytes | None, exponent: bytes | None) -> int | float:
    if fraction is None and exponent is None and len(token) <= 20:
        number = int(token)
        if -(2**63) <= number < 2**64:  # as orjson: integers beyond 64 bits become floats
            return number
    value = float(token)
    if math.isinf(value):
        raise NotJSON(f"the number {token[:40].decode()} is out of range for a 64-bit float")
    return value


class _Builder:
    """Builds the document ``_scan`` reads, one token at a time, without recursion."""

    __slots__ = ("containers", "keys", "root")

    def __init__(self) -> None:
        self.containers: list[Any] = []  # the open containers, innermost last
        self.keys: list[str] = []  # the pending key of each open container ("" for arrays)
        self.root: Any = _INVALID

    def _attach(self, value: Any) -> None:
        if not self.containers:
            self.root = value
            return
        parent = self.containers[-1]
        if type(parent) is list:
            parent.append(value)
        else:
            parent[self.keys[-1]] = value

    def open_arrays(self, count: int) -> None:
        for _ in range(count):
            child: list[Any] = []
            self._attach(child)
            self.containers.append(child)
            self.keys.append("")

    def open_object(self) -> None:
        child: dict[str, Any] = {}
        self._attach(child)
        self.containers.append(child)
        self.keys.append("")

    def close(self, count: int) -> None:
        del self.containers[-count:]
        del self.keys[-count:]

    def key(self, token: bytes) -> None:
        self.keys[-1] = _string(token)

    def scalar(self, m: re.Match[bytes]) -> None:
        kind = m.lastindex
        if kind == _STR:
            self._attach(_string(m.group(_STR)))
        elif kind == _NUM:
            self._attach(_number(m.group(_NUM), m.group(_FRAC), m.group(_EXP)))
        else:
            self._attach(_LITERALS[m.group(_LIT)])


def _scan(raw: bytes, builder: _Builder | None) -> bool:
    """Whether ``raw`` is JSON (Go's gjson grammar), read without recursion; a ``builder`` is
    handed every token (its strings must be UTF-8: callers fix that first)."""
    stack = bytearray()  # b"[" or b"{" per open container
    state = _VALUE
    pos = 0
    match = _TOKEN.match
    while (m := match(raw, pos)) is not None:
        pos = m.end()
        kind = m.lastindex
        if kind == _CLOSE:
            closers = m.group(_CLOSE)
            count = len(closers)
            if (
                state not in _CLOSABLE
                or count > len(stack)
                or stack[-count:] != closers[::-1].translate(_OPENERS)
            ):
                return False
            del stack[-count:]
            if builder is not None:
                builder.close(count)
            state = _AFTER
        elif kind == _COMMA:
            if state != _AFTER or not stack:
                return False
            state = _KEY if stack[-1] == _BRACE else _VALUE
        elif kind == _COLON:
            if state != _COLON_NEXT:
                return False
            state = _VALUE
        elif kind == _STR and state in _KEYS:
            if builder is not None:
                builder.key(m.group(_STR))
            state = _COLON_NEXT
        elif state not in _VALUES:
            return False
        elif kind == _ARRAYS:
            count = pos - m.start(_ARRAYS)
            stack += b"[" * count
            if builder is not None:
                builder.open_arrays(count)
            state = _VALUE_OR_END
        elif kind == _OBJECT:
            stack += b"{"
            if builder is not None:
                builder.open_object()
            state = _KEY_OR_END
        else:
            if builder is not None:
                builder.scalar(m)
            state = _AFTER
    return state == _AFTER and not stack and not raw[pos:].strip(_WS)


def _check_depth(raw: bytes, known_shallow: bool | None = None) -> bool:
    """True when ``raw`` is shallow enough for the native libraries; ``TooDeep`` past
    ``MAX_DEPTH``; False in between (the iterative code reads it). ``known_shallow``: what
    ``shallow(raw)`` gave, if the caller has it already."""
    if shallow(raw) if known_shallow is None else known_shallow:
        return True
    levels = nesting(raw, exact=True)
    if levels > MAX_DEPTH:
        raise TooDeep(levels)
    return levels <= NATIVE_DEPTH


def validate(raw: bytes, *, known_shallow: bool | None = None) -> bool:
    """Go's ``gjson.ValidBytes``: JSON syntax, strings not checked as UTF-8, at any depth up to
    ``MAX_DEPTH`` (``TooDeep`` beyond it). ``known_shallow``: ``shallow(raw)``, if known."""
    if _check_depth(raw, known_shallow):
        return pygjson.validate(raw)
    return _scan(raw, None)


def valid(raw: bytes) -> bool:
    """``validate``, with a body too deep to read counted as not valid."""
    try:
        return validate(raw)
    except TooDeep:
        return False


def loads(raw: bytes, *, lossy_utf8: bool = False) -> Any:
    """Decode a JSON document; ``NotJSON`` with the reason when it cannot be.

    orjson decodes it when it can. What orjson refuses but Go's reader accepts is decoded here
    as Go does: lone surrogate escapes become U+FFFD, and documents deeper than orjson's 1024
    levels are built iteratively, up to ``MAX_DEPTH`` (``TooDeep`` beyond). Bytes that are not
    UTF-8 are refused (``NotJSON.utf8``), or with ``lossy_utf8`` replaced by one U+FFFD each, as
    ``encoding/json`` does.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        refused = str(exc)
    text = raw
    bad_utf8 = utf8_error(raw)
    if bad_utf8 is not None:
        if not validate(raw):
            raise NotJSON(refused)
        if not lossy_utf8:
            raise NotJSON(bad_utf8, utf8=True)
        text = go_text(raw).encode()
    text = _fix_surrogates(text)
    if text is not raw:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            refused = str(exc)
    if nesting(text) <= _ORJSON_DECODE_DEPTH:
        raise NotJSON(refused)  # not JSON, or a number out of a double's range
    levels = nesting(text, exact=True)
    if levels > MAX_DEPTH:
        raise TooDeep(levels)
    builder = _Builder()
    if not _scan(text, builder):
        raise NotJSON(refused)
    return builder.root


# --- encoding ----------------------------------------------------------------------------------

_SURROGATES = re.compile("[\ud800-\udfff]")


def _scalar(value: Any) -> bytes:
    """A value that is not a list, tuple or dict, as orjson writes it where it can."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    if isinstance(value, str):  # lone surrogates: Go's encoder writes U+FFFD for them
        return orjson.dumps(_SURROGATES.sub("\ufffd", value))
    if isinstance(value, int) and not isinstance(value, bool):  # beyond 64 bits
        try:
            return str(value).encode()
        except ValueError as exc:  # Python refuses to write integers of over 4300 digits
            raise EncodeError(f"an integer too long to write ({exc})") from None
    raise EncodeError(f"a {type(value).__name__} is not a JSON value")


def _key(key: Any) -> bytes:
    if not isinstance(key, str):
        raise EncodeError(f"an object key must be a string, not {type(key).__name__}")
    return _scalar(key)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON: orjson when it can, else iteratively (deep documents, integers
    beyond 64 bits, lone surrogates); ``EncodeError`` for values JSON cannot hold."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    out: list[bytes] = []
    # The open containers, innermost last: the iterator over each one's items, its closing
    # bracket, and whether it is an object.
    open_: list[tuple[Iterator[Any], bytes, bool]] = []
    current: Any = value
    while True:
        if isinstance(current, dict):
            out.append(b"{")
            open_.append((iter(current.items()), b"}", True))
        elif isinstance(current, list | tuple):
            out.append(b"[")
            open_.append((iter(current), b"]", False))
        else:
            out.append(_scalar(current))
        # Close what is finished; stop at the next item to write.
        while open_:
            items, closing, is_object = open_[-1]
            item: Any = next(items, _INVALID)
            if item is _INVALID:
                open_.pop()
                out.append(closing)
                continue
            if out[-1] not in (b"[", b"{"):  # not the container's first item
                out.append(b",")
            if is_object:
                key, current = item
                out.append(_key(key) + b":")
            else:
                current = item
            break
        else:
            return b"".join(out)
