"""Bearer-token scopes of the product's HTTP APIs, checked before a body is read.

Both the classification API (``serve/app.py``) and the ingestion API
(``ingestion/api.py``) guard their routes with :class:`ScopeGuard`, an ASGI middleware:

* each guarded route needs one *scope* (``classify``, ``admin``, ``write``,
  ``feedback``, ...); each scope has its own token, set by environment or a
  Kubernetes Secret (``SIGNALS_SERVE_<SCOPE>_TOKEN``, ``SIGNALS_INGEST_<SCOPE>_TOKEN``);
* the service's ``admin`` token grants every scope of that service;
* a scope whose token is unset is either *open* (anyone may call) or *disabled*
  (every call gets 403 ``<scope>_disabled``), as its :class:`Scope` says;
* no token or an unknown one: 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``;
  a token of another scope: 403 ``forbidden``;
* routes that match no rule (health, readiness, metrics, the OpenAPI document) are
  open.

A route declares its scope once, as a dependency: ``dependencies=[Security(bearer_docs(
scope))]``. That puts the lock into the OpenAPI document, and :func:`rules_from_routes`
reads the same declarations back into the guard's rules, so a route can never show a
lock in the docs and be open (or the reverse). The guard is added after the routes.

It is middleware, not a FastAPI dependency, so that it answers before the body is
read or parsed: an unauthenticated request with a malformed or oversized body gets
401, never 422 or 413. Tokens are compared with :func:`secrets.compare_digest`, and
every configured token is compared on every request (the time taken does not say
which token came close).

A request that passes the guard on a guarded route carries the scopes its token grants
(:func:`scopes_granted`), so a route can tell the admin token from its own scope's (the
ingestion API binds the feedback token to the label sources it may claim).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from fastapi.security import HTTPBearer

from serve.errors import error_response


@dataclass(frozen=True)
class Scope:
    """A permission a route needs, and the token that grants it."""

    name: str
    """Scope name, as shown in errors and the docs (``classify``, ``admin``, ...)."""

    token: str | None
    """The token granting it; None: unset."""

    open_when_unset: bool
    """True: without a token the scope is open to everyone; False: it is disabled."""

    setting: str
    """Environment variable that sets the token (named in error messages)."""


@dataclass(frozen=True)
class Rule:
    """Requests with ``method`` whose whole path matches ``path`` (a regex) need
    ``scope``. Built by :func:`rules_from_routes`, not by hand."""

    method: str
    path: str
    scope: str


class ScopeGuard:
    """ASGI middleware enforcing :class:`Rule` s with :class:`Scope` tokens."""

    def __init__(self, app, scopes: list[Scope], rules: list[Rule], admin_scope: str = "admin"):
        self.app = app
        self.scopes = {s.name: s for s in scopes}
        self.rules = [(r.method, re.compile(r.path), r.scope) for r in rules]
        self.admin_scope = admin_scope
        unknown = {r.scope for r in rules} - set(self.scopes)
        if unknown:
            raise ValueError(f"rules name undefined scopes: {sorted(unknown)}")

    def scope_for(self, method: str, path: str) -> Scope | None:
        for rule_method, pattern, scope in self.rules:
            if rule_method == method and pattern.fullmatch(path):
                return self.scopes[scope]
        return None

    def granted(self, presented: str | None) -> set[str]:
        """Scopes the presented token grants (compares it with every configured token)."""
        granted: set[str] = set()
        given = (presented or "").encode()
        for scope in self.scopes.values():
            if scope.token is not None and secrets.compare_digest(given, scope.token.encode()):
                granted.add(scope.name)
        if presented is None:
            return set()
        if self.admin_scope in granted:
            granted |= set(self.scopes)
        return granted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        needed = self.scope_for(scope["method"], scope["path"])
        if needed is None:
            return await self.app(scope, receive, send)
        granted = self.granted(_bearer_token(scope))
        scope.setdefault("state", {})[_GRANTED] = frozenset(granted)
        if needed.token is None and needed.open_when_unset:
            return await self.app(scope, receive, send)
        if needed.name in granted:
            return await self.app(scope, receive, send)
        admin = self.scopes.get(self.admin_scope)
        if needed.token is None and (admin is None or admin.token is None):
            return await error_response(
                403, f"{needed.name}_disabled", f"the '{needed.name}' routes are disabled: "
                f"start the service with a token for them ({needed.setting})"
            )(scope, receive, send)
        if granted:
            return await error_response(
                403, "forbidden", f"this token does not grant the '{needed.name}' scope"
            )(scope, receive, send)
        return await error_response(
            401, "unauthorized", f"this route needs 'Authorization: Bearer <token>' with the "
            f"'{needed.name}' scope ({needed.setting}) or the admin token",
            headers={"WWW-Authenticate": 'Bearer realm="signals"'})(scope, receive, send)


_GRANTED = "signals_scopes_granted"
"""Key of the granted scopes in the ASGI scope's ``state`` (``request.state``)."""


def scopes_granted(request) -> frozenset[str]:
    """The scopes the token of a request that passed :class:`ScopeGuard` grants (empty:
    no token, an unknown one, or a route the guard does not check)."""
    return request.scope.get("state", {}).get(_GRANTED, frozenset())


def _bearer_token(scope) -> str | None:
    for key, value in scope.get("headers") or []:
        if key == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class ScopeBearer(HTTPBearer):
    """The security dependency a route declares its scope with: a no-op at request time
    (the check is :class:`ScopeGuard`'s, before the body is read) that documents the
    scope in OpenAPI and names it for :func:`rules_from_routes`."""

    def __init__(self, scope: Scope):
        super().__init__(auto_error=False, scheme_name=f"{scope.name} token",
                         description=f"Bearer token of the '{scope.name}' scope "
                         f"({scope.setting}); the admin token grants every scope.")
        self.scope_name = scope.name


def bearer_docs(scope: Scope) -> ScopeBearer:
    """The dependency that puts ``scope`` on a route: in its docs and in the guard."""
    return ScopeBearer(scope)


def rules_from_routes(app) -> list[Rule]:
    """One :class:`Rule` per method of every route of ``app`` that declares a scope with
    :func:`bearer_docs` (its path pattern is the route's own, parameters included)."""
    rules = []
    for route in app.routes:
        dependant = getattr(route, "dependant", None)
        if dependant is None:  # a mounted app or a plain Starlette route: no scope
            continue
        names = {d.call.scope_name for d in dependant.dependencies
                 if isinstance(d.call, ScopeBearer)}
        if len(names) > 1:
            raise ValueError(f"route {route.path} declares several scopes: {sorted(names)}")
        for name in names:
            rules.extend(Rule(method, route.path_regex.pattern, name)
                         for method in sorted(route.methods))
    return rules
