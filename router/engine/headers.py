"""Which incoming request headers are forwarded to every step (KServe's ``PROPAGATE_HEADERS``).

Patterns are regular expressions matched anywhere (unanchored, case-sensitive) in the header's
canonical name (``X-Request-Id`` form). ``None`` (the variable unset) forwards nothing; an empty
setting forwards every header. A pattern that does not compile is reported and skipped.

Hop-by-hop headers are never forwarded: the fixed list, and every header the request's
``Connection`` header names (RFC 9110, 7.6.1), as Go's reverse proxy drops them. Values are
forwarded exactly as they arrived (the server hands them over as Latin-1 strings of the bytes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from infergraph.router.engine.transport import Headers

# Headers that describe one connection or one message body, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Te",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Expect",
    }
)
JSON_ONLY: Headers = (("Content-Type", "application/json"),)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def canonical_name(name: str) -> str:
    """Go's canonical MIME header form: ``x-request-id`` -> ``X-Request-Id``.

    Like Go, a name with characters outside the HTTP token set is left unchanged.
    """
    if not _TOKEN.match(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _connection_nominated(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The canonical names the ``Connection`` header lists (``Connection: close, X-Hop``)."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(
                canonical_name(token.strip()) for token in value.split(",") if token.strip()
            )
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """A compiled ``PROPAGATE_HEADERS`` setting."""

    patterns: tuple[re.Pattern[str], ...] | None
    rejected: tuple[str, ...] = ()

    @classmethod
    def from_setting(cls, setting: str | None) -> HeaderPolicy:
        if setting is None:
            return cls(patterns=None)
        if setting.strip() == "":
            return cls(patterns=())
        compiled: list[re.Pattern[str]] = []
        rejected: list[str] = []
        for raw in setting.split(","):
            try:
                compiled.append(re.compile(raw))
            except re.error as exc:
                rejected.append(f"{raw!r}: {exc}")
        return cls(patterns=tuple(compiled), rejected=tuple(rejected))

    def forward(self, incoming: Iterable[tuple[str, str]]) -> Headers:
        """The headers for each step: the propagated ones, plus a JSON content type if none."""
        patterns = self.patterns
        if patterns is None:  # PROPAGATE_HEADERS unset, KServe's default: nothing forwarded
            return JSON_ONLY
        selected: list[tuple[str, str]] = []
        incoming = tuple(incoming)
        nominated = _connection_nominated(incoming)
        for name, value in incoming:
            canonical = canonical_name(name)
            if canonical in HOP_BY_HOP or (nominated and canonical in nominated):
                continue
            if not patterns or any(p.search(canonical) for p in patterns):
                selected.append((canonical, value))
        if not any(name == "Content-Type" for name, _ in selected):
            selected.append(("Content-Type", "application/json"))
        return tuple(selected)
