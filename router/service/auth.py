"""Client authentication with Kubernetes (``--auth kubernetes``), the Open Data Hub fork's model:
the bearer token is checked with a ``TokenReview`` and the caller's access with a
``SubjectAccessReview`` on the graph's InferenceGraph resource (``get`` by default).

- A request without a token, or with one the API server does not accept, gets 401 with the
  reason; a caller the review denies gets 403 naming the verb, resource and graph.
- Decisions are kept for ``cache_seconds`` (per token, and per caller and graph), so a busy
  graph costs the API server a review per caller every few seconds, not one per request.
- When the API server cannot be asked (unreachable, an error status), the request is refused
  with 403 and the reason: closed, as Envoy's external authorization fails by default.
- Probes (``/readyz``, ``/healthz``) and ``/metrics`` stay open unless ``protect_probes``.

The router talks to the API server with aiohttp (the router has no Kubernetes client): its
address, token and CA come from the settings (in a pod: the service account's own files).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from infergraph.router.engine.errors import Forbidden, Unauthenticated

log = logging.getLogger("infergraph.router")
REVIEW_SECONDS = 5.0


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
        return await self._review_token(token)

    async def _review_token(self, token: str) -> _Caller:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        kept = self._callers.get(key)
        if kept is None or kept[0] < now:
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
            kept = (now + self.settings.cache_seconds, outcome)
            self._callers[key] = kept
            if len(self._callers) > 10_000:
                self._prune(now)
        if isinstance(kept[1], str):
            raise Unauthenticated(f"the API server does not accept the token: {kept[1]}")
        return kept[1]

    async def authorize(self, caller: _Caller, graph: str) -> None:
        """Return if ``caller`` may use ``graph``; else ``Forbidden``."""
        settings = self.settings
        now = time.monotonic()
        kept = self._access.get((caller, graph))
        if kept is None or kept[0] < now:
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
                now + settings.cache_seconds,
                bool(status.get("allowed")),
                status.get("reason", ""),
            )
            self._access[(caller, graph)] = kept
        if not kept[1]:
            why = f" ({kept[2]})" if kept[2] else ""
            raise Forbidden(
                f"{caller.username} may not {settings.verb} {settings.resource} {graph!r} "
                f"in namespace {settings.namespace}{why}"
            )

    def _prune(self, now: float) -> None:
        self._callers = {k: v for k, v in self._callers.items() if v[0] >= now}
        self._access = {k: v for k, v in self._access.items() if v[0] >= now}

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
