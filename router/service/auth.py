"""Client authentication with Kubernetes (``--auth kubernetes``), the Open Data Hub fork's model:
the bearer token is checked with a ``TokenReview`` and the caller's access with a
``SubjectAccessReview`` on the graph's InferenceGraph resource (``get`` by default).

- A request without a token, or with one the API server does not accept, gets 401 with the
  reason; a caller the review denies gets 403 naming the verb, resource and graph.
- Decisions are kept for ``cache_seconds`` (per token, and per caller and graph), so a busy
  graph costs the API server a review per caller every few seconds, not one per request; calls
  that need the same review while it is asked share it (as the API server's own cached token
  authenticator does), and each cache keeps at most ``CACHE_ENTRIES``, the oldest going first.
- A token over ``MAX_TOKEN_BYTES`` is refused with 401 unasked.
- When the API server cannot be asked (unreachable, an error status), the request is refused
  with 403 and the reason: closed, as Envoy's external authorization fails by default.
- Probes (``/readyz``, ``/healthz``) and ``/metrics`` stay open unless ``protect_probes``.

The router talks to the API server with aiohttp (the router has no Kubernetes client): its
address, token and CA come from the settings (in a pod: the service account's own files).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from infergraph.router.engine.errors import Forbidden, Unauthenticated

log = logging.getLogger("infergraph.router")
REVIEW_SECONDS = 5.0
CACHE_ENTRIES = 10_000
MAX_TOKEN_BYTES = 16 * 1024  # service account and OIDC tokens are a few KiB


@dataclass(frozen=True, slots=True)
class AuthSettings:
    api_url: str
    token_file: Path | None = None  # the router's own token, to ask for reviews
    ca_file: Path | None = None
    namespace: str = "default"
    resource: str = "serving.kserve.io/inferencegraphs"  # group/resource
    verb: str = "get"
    cache_seconds: float = 10.0
    protect_probes: bool = False


@dataclass(frozen=True, slots=True)
class _Caller:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


class KubernetesAuth:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._callers: dict[str, tuple[float, _Caller | str]] = {}
        self._access: dict[tuple[_Caller, str], tuple[float, bool, str]] = {}
        self._asking: dict[object, asyncio.Future[Any]] = {}  # reviews being asked, by key

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(self, authorization: str | None) -> _Caller:
        """The caller an ``Authorization`` header names; else ``Unauthenticated``."""
        if not authorization or authorization[:7].lower() != "bearer ":
            raise Unauthenticated("a bearer token is required (Authorization: Bearer <token>)")
        token = authorization[7:].strip()
        if not token:
            raise Unauthenticated("the bearer token is empty")
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(f"the bearer token is over {MAX_TOKEN_BYTES} bytes")
        return await self._review_token(token)

    async def _shared(self, key: object, ask: Callable[[], Awaitable[Any]]) -> Any:
        """``ask()``'s answer, asked once for all the calls that want it meanwhile (a caller
        that leaves does not cancel it for the others)."""
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(ask())

            def done(task: asyncio.Future[Any]) -> None:
                del self._asking[key]
                if not task.cancelled():
                    task.exception()  # retrieved, should every caller have left

            asking.add_done_callback(done)
        return await asyncio.shield(asking)

    async def _review_token(self, token: str) -> _Caller:
        key = hashlib.sha256(token.encode()).hexdigest()
        kept = self._callers.get(key)
        if kept is None or kept[0] < time.monotonic():
            kept = await self._shared(key, lambda: self._ask_token(key, token))
        if isinstance(kept[1], str):
            raise Unauthenticated(f"the API server does not accept the token: {kept[1]}")
        return kept[1]

    async def _ask_token(self, key: str, token: str) -> tuple[float, _Caller | str]:
        review = await self._post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": token}},
        )  # fmt: skip
        status = review.get("status") or {}
        outcome: _Caller | str
        if status.get("authenticated"):
            user = status.get("user") or {}
            extra = user.get("extra") or {}
            outcome = _Caller(
                user.get("username", ""),
                user.get("uid", ""),
                tuple(user.get("groups") or ()),
                tuple(sorted((k, tuple(v)) for k, v in extra.items())),
            )
        else:
            outcome = status.get("error") or "the token is not valid"
        kept = (time.monotonic() + self.settings.cache_seconds, outcome)
        _keep(self._callers, key, kept)
        return kept

    async def authorize(self, caller: _Caller, graph: str) -> None:
        """Return if ``caller`` may use ``graph``; else ``Forbidden``."""
        settings = self.settings
        key = (caller, graph)
        kept = self._access.get(key)
        if kept is None or kept[0] < time.monotonic():
            kept = await self._shared(key, lambda: self._ask_access(caller, graph))
        if not kept[1]:
            why = f" ({kept[2]})" if kept[2] else ""
            raise Forbidden(
                f"{caller.username} may not {settings.verb} {settings.resource} {graph!r} "
                f"in namespace {settings.namespace}{why}"
            )

    async def _ask_access(self, caller: _Caller, graph: str) -> tuple[float, bool, str]:
        settings = self.settings
        group, _, resource = settings.resource.rpartition("/")
        spec: dict[str, Any] = {
            "user": caller.username,
            "uid": caller.uid,
            "groups": list(caller.groups),
            "extra": {k: list(v) for k, v in caller.extra},
            "resourceAttributes": {
                "namespace": settings.namespace,
                "verb": settings.verb,
                "group": group,
                "resource": resource,
                "name": graph,
            },
        }
        review = await self._post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": spec},
        )  # fmt: skip
        status = review.get("status") or {}
        kept = (
            time.monotonic() + settings.cache_seconds,
            bool(status.get("allowed")),
            status.get("reason", ""),
        )
        _keep(self._access, (caller, graph), kept)
        return kept

    async def _post(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        """Create a review; any failure to get one refuses the request (fail closed)."""
        settings = self.settings
        headers = {"Content-Type": "application/json"}
        try:
            if settings.token_file is not None:
                headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"
            if self._session is None:
                context = ssl.create_default_context(
                    cafile=str(settings.ca_file) if settings.ca_file else None
                )
                timeout = aiohttp.ClientTimeout(total=REVIEW_SECONDS)
                connector = aiohttp.TCPConnector(ssl=context)
                self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
            async with self._session.post(
                settings.api_url.rstrip("/") + path, json=review, headers=headers
            ) as response:
                if response.status not in {200, 201}:
                    text = (await response.text())[:200]
                    raise Forbidden(
                        f"access could not be checked: the API server answered "
                        f"{response.status} to a {review['kind']}: {text}"
                    )
                answer: dict[str, Any] = await response.json()
                return answer
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.error("cannot reach the API server to check a token: %s", error)
            raise Forbidden(
                f"access could not be checked: the API server at {settings.api_url} is "
                f"unreachable ({type(error).__name__}: {error})"
            ) from error


def _keep(cache: dict[Any, Any], key: Any, entry: tuple[Any, ...]) -> None:
    """Store ``entry`` (its expiry first); past ``CACHE_ENTRIES``, drop the expired entries and
    then the oldest, down to half, so a flood of new keys costs constant time per key."""
    cache.pop(key, None)  # re-inserted: the newest
    cache[key] = entry
    if len(cache) > CACHE_ENTRIES:
        now = time.monotonic()
        for old in [k for k, v in cache.items() if v[0] < now]:
            del cache[old]
        excess = len(cache) - CACHE_ENTRIES // 2
        if excess > 0:
            for old in list(itertools.islice(cache, excess)):
                del cache[old]
