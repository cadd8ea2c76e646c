"""The signal-classification HTTP API (FastAPI; OpenAPI at ``/docs``).

Routes owned here:

* ``POST /v1/classify``  one article, a list, or a mixed batch of (article, adapter)
  items -> label, P(signal), adapter version, threshold, truncated, per article
* ``GET  /v1/adapters``  adapters in the registry, aliases, which are loaded
* ``POST /v1/adapters/{name}/load``    hot-load a registry adapter        (admin)
* ``POST /v1/adapters/{name}/unload``  unload it from the backend         (admin)
* ``POST /v1/aliases/{alias}``         point an alias at a version: promote (admin)
* ``GET  /health``  the process is up (liveness)
* ``GET  /ready``   warm-up done and the backend answers (readiness)
* ``GET  /metrics`` Prometheus metrics

The routes are plain functions in three routers, one per scope (classify, admin, open),
over one typed dependency, :data:`Service`: the :class:`ClassificationService` of the
app serving the request (its classifier, registry, metrics and limits).

Scopes (``serve/auth.py``), checked before the body is read: the admin routes need
``Authorization: Bearer <admin token>`` (``SIGNALS_SERVE_ADMIN_TOKEN``; unset: they are
disabled, 403); ``/v1/classify`` and ``/v1/adapters`` need the classify token
(``SIGNALS_SERVE_CLASSIFY_TOKEN``) when one is set, else they are open; the admin token
grants both. Health, readiness and metrics stay open. A background watcher loads new
registry versions and follows alias changes within ``watch_interval_s``.

Who may make the server load a version (issue 29): a classify caller may name the base
model, any alias, or a version that is loaded; naming any other registry version loads it
on demand only for the admin token. Other callers get 403 ``adapter_not_loaded`` and no
adapter slot moves, so a classify token cannot churn the backend's ``--max-loras`` slots
by walking the registry. A service started with no tokens at all (the loopback default,
where the API is open anyway) loads on demand for every caller, as before.

A batch with empty articles classifies the others: each empty one gets an ``error``
entry (the error shape below) in its place in ``results``; ``"strict": true`` turns
that into the all-or-nothing 422 instead.

Request and response bodies: ``serve/schemas.py``. Every failure answers with one shape
(``serve/errors.py``)::

    {"error": {"type": "adapter_not_found", "message": "...", "details": [...]}}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Request, Security
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest

from pipeline.article import Article
from pipeline.prompt import BASE_NAME
from serve.auth import Scope, ScopeGuard, bearer_docs, rules_from_routes, scopes_granted
from serve.errors import (ApiError, BodySizeLimit, ErrorBody, ErrorResponse, error_response,
                          install_error_handlers)
from serve.schemas import (
    ALIAS_MAX,
    ALIAS_REGEX,
    AdapterState,
    AliasRequest,
    AliasState,
    ArticleError,
    ArticleResult,
    ClassifyRequest,
    ClassifyResponse,
    adapter_path,
)
from classify.backends import AdapterLoadError, BackendTimeout, BackendUnavailable
from classify.classifier import BaseModelNotAdapter, NotEnoughToEstimate, SignalClassifier
from classify.registry import AdapterNotFound, InvalidAdapterName

log = logging.getLogger(__name__)

WARMUP_ARTICLE = Article(id="warm-up", title="Warm-up", text="The service is starting.")


# --- metrics -----------------------------------------------------------------------

class ApiMetrics:
    """Prometheus metrics of one app instance (own registry: several apps per process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("signals_classify_requests", "Classification requests by outcome",
                                ["outcome"], registry=self.registry)
        self.articles = Counter("signals_classified_articles",
                                "Articles classified, by adapter version and label",
                                ["adapter", "label"], registry=self.registry)
        self.errors = Counter("signals_api_errors", "API errors by kind", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("signals_classify_latency_seconds",
                                 "Time to answer one classification request",
                                 registry=self.registry,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("signals_classify_batch_size", "Articles per request",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.backend_up = Gauge("signals_backend_up", "1 when the model backend answers",
                                registry=self.registry)
        self.adapters_loaded = Gauge("signals_adapters_loaded", "Adapters loaded in the backend",
                                     registry=self.registry)
        self.adapter_loads = Counter("signals_adapter_loads",
                                     "Adapter loads by what triggered them",
                                     ["trigger"], registry=self.registry)


# --- what the routes share ----------------------------------------------------------

CLASSIFY_SCOPE = Scope("classify", None, open_when_unset=True,
                       setting="SIGNALS_SERVE_CLASSIFY_TOKEN")
"""Classification and the adapter list: open while no classify token is set."""
ADMIN_SCOPE = Scope("admin", None, open_when_unset=False, setting="SIGNALS_SERVE_ADMIN_TOKEN")
"""Loading, unloading, aliases: disabled while no admin token is set."""
NAME_DOC = "Adapter version name or alias in the registry (not 'base': 400)."


class ClassificationService:
    """One instance of the API: the classifier and its registry, the metrics, this
    instance's limits, the warm-up and the registry watcher, and the backend's failures
    turned into API errors. The routes below reach it through :data:`Service`."""

    def __init__(self, classifier: SignalClassifier, max_batch: int, warmup_retry_s: float,
                 preload: Sequence[str], watch_interval_s: float | None,
                 anyone_loads: bool) -> None:
        self.classifier = classifier
        self.registry = classifier.registry
        self.metrics = ApiMetrics()
        self.max_batch = max_batch
        self.warmup_retry_s = warmup_retry_s
        self.preload = list(preload)
        self.watch_interval_s = watch_interval_s
        self.anyone_loads = anyone_loads
        """No token at all: every caller may make the server load a version."""
        self.ready = False
        self.warmup_error: str | None = "warm-up not finished"
        self.seen_versions = {v.name for v in self.registry.list()}

    async def load(self, name: str, trigger: str) -> None:
        before = set(self.classifier.loaded)
        version = await self.classifier.ensure_loaded(name)
        self.seen_versions.add(version.name)  # dealt with: the watcher leaves it alone now
        if set(self.classifier.loaded) != before:
            self.metrics.adapter_loads.labels(trigger).inc()
        self.metrics.adapters_loaded.set(len(self.classifier.loaded))

    async def follow_registry(self) -> None:
        """Load new versions and alias targets; never sees half-written versions."""
        for alias, target in sorted(self.registry.aliases().items()):
            if target not in self.classifier.loaded:
                await self.load(target, "alias")
        for version in self.registry.list():
            if version.name not in self.seen_versions:
                self.seen_versions.add(version.name)
                await self.load(version.name, "watcher")

    async def warm_up(self) -> None:
        """Load the preloaded and aliased adapters and classify one article, retrying
        until that succeeds; then follow the registry every ``watch_interval_s``."""
        while True:
            try:
                for name in self.preload:
                    await self.load(name, "preload")
                await self.follow_registry()
                await self.classifier.classify([WARMUP_ARTICLE])
                self.ready, self.warmup_error = True, None
                self.metrics.backend_up.set(1)
                log.info("warm-up done: ready")
                break
            except Exception as error:  # keep trying; /ready says why
                self.warmup_error = str(error)
                self.metrics.backend_up.set(0)
                await asyncio.sleep(self.warmup_retry_s)
        while self.watch_interval_s:
            await asyncio.sleep(self.watch_interval_s)
            try:
                await self.follow_registry()
            except Exception as error:  # a bad version must not stop the watcher
                log.warning("registry watcher: %s", error)

    async def call_backend(self, coro):
        """Await ``coro``; the classifier's and backend's failures as :class:`ApiError`."""
        metrics = self.metrics
        try:
            return await coro
        except AdapterNotFound as error:
            raise ApiError(404, "adapter_not_found", str(error)) from error
        except InvalidAdapterName as error:
            raise ApiError(400, "invalid_adapter_name", str(error)) from error
        except BackendTimeout as error:
            metrics.requests.labels("timeout").inc()
            raise ApiError(504, "backend_timeout", str(error)) from error
        except BackendUnavailable as error:
            metrics.backend_up.set(0)
            metrics.requests.labels("unavailable").inc()
            raise ApiError(503, "backend_unavailable", str(error)) from error
        except AdapterLoadError as error:
            raise ApiError(502, "adapter_load_failed", str(error)) from error
        except BaseModelNotAdapter as error:
            raise ApiError(400, "base_model_not_adapter", str(error)) from error
        except NotEnoughToEstimate as error:
            raise ApiError(422, "signal_rate_not_estimable", str(error)) from error

    async def refuse_unloaded(self, names: set[str | None], granted: frozenset[str]) -> None:
        """403 ``adapter_not_loaded`` for a named version that only the admin may load."""
        if self.anyone_loads or "admin" in granted:
            return
        aliases = self.registry.aliases()
        for name in sorted(n for n in names if n is not None and n not in aliases):
            version = self.classifier.resolve(name)  # 404 / 400 for unknown or invalid names
            if version is not None and version.name not in self.classifier.loaded:
                raise ApiError(403, "adapter_not_loaded", (
                    f"version {version.name!r} is in the registry but not loaded; name an "
                    "alias or a loaded version (GET /v1/adapters), or load it with the "
                    "admin route POST /v1/adapters/{name}/load"))


def _service(request: Request) -> ClassificationService:
    return request.app.state.service


Service = Annotated[ClassificationService, Depends(_service)]
"""The routes' typed dependency: the instance serving this request."""


# --- the routes -----------------------------------------------------------------------

classify_routes = APIRouter(dependencies=[Security(bearer_docs(CLASSIFY_SCOPE))])
admin_routes = APIRouter(dependencies=[Security(bearer_docs(ADMIN_SCOPE))])
open_routes = APIRouter()


@classify_routes.post("/v1/classify", response_model=ClassifyResponse)
async def classify(request: ClassifyRequest, http: Request,
                   service: Service) -> ClassifyResponse:
    """Classify one article, a batch, or a mixed batch over several adapters.

    Empty articles (no title, no text) get an ``error`` entry in their place in
    ``results`` and the others are classified, unless ``strict`` is true (422).
    Naming a registry version that is not loaded needs the admin token (403
    ``adapter_not_loaded``) unless the service runs without tokens."""
    classifier, metrics = service.classifier, service.metrics
    pairs = request.pairs
    if len(pairs) > service.max_batch:
        raise ApiError(422, "batch_too_large",
                       f"{len(pairs)} articles in one request; at most {service.max_batch}")
    await service.call_backend(service.refuse_unloaded({adapter for _, adapter in pairs},
                                                       scopes_granted(http)))
    valid = [pair for pair in pairs if pair[0].content_problem() is None]
    started = time.perf_counter()
    results = iter(await service.call_backend(classifier.classify_mixed(
        valid, request.threshold, request.signal_rate))
                   if valid else [])
    metrics.latency.observe(time.perf_counter() - started)
    metrics.batch.observe(len(pairs))
    metrics.requests.labels("ok" if len(valid) == len(pairs) else "partial").inc()
    metrics.backend_up.set(1)
    metrics.adapters_loaded.set(len(classifier.loaded))
    answers: list[ArticleResult | ArticleError] = []
    for article, _ in pairs:
        problem = article.content_problem()
        if problem is not None:
            metrics.errors.labels("empty_article").inc()
            answers.append(ArticleError(id=article.id, error=ErrorBody(
                type="empty_article", message=problem)))
            continue
        result = next(results)
        metrics.articles.labels(result.adapter, str(result.label)).inc()
        answers.append(ArticleResult.model_validate(result, from_attributes=True))
    return ClassifyResponse(results=answers)


@classify_routes.get("/v1/adapters")
async def list_adapters(service: Service) -> dict:
    """Adapters in the registry with their manifests, the aliases, what is loaded;
    ``dtype_mismatch``: the version's calibration was fitted in another dtype than
    the backend computes in (``served_dtype``), so it may not hold (null: unknown)."""
    classifier, registry = service.classifier, service.registry
    return {
        "adapters": [{"name": v.name, "loaded": v.name in classifier.loaded,
                      "manifest": v.manifest.to_json(),
                      "dtype_mismatch": classifier.dtype_mismatch(v)}
                     for v in registry.list()],
        "served_dtype": classifier.backend.dtype,
        "aliases": registry.aliases(),
        "loaded": list(classifier.loaded),
    }


@admin_routes.post("/v1/adapters/{name}/load")
async def load_adapter(service: Service, name: str = adapter_path(NAME_DOC)) -> AdapterState:
    """Hot-load a registry adapter (name or alias) into the backend; no restart.
    404: not in the registry; 400 ``base_model_not_adapter``: 'base'."""
    await service.call_backend(service.load(name, "admin"))
    return AdapterState(name=service.classifier.resolve(name).name, loaded=True)


@admin_routes.post("/v1/adapters/{name}/unload")
async def unload_adapter(service: Service,
                         name: str = adapter_path(NAME_DOC)) -> AdapterState:
    """Unload an adapter from the backend (it stays in the registry).
    404: not in the registry; 400 ``base_model_not_adapter``: 'base'."""
    version_name = await service.call_backend(service.classifier.unload(name))
    service.metrics.adapters_loaded.set(len(service.classifier.loaded))
    return AdapterState(name=version_name, loaded=False)


@admin_routes.post("/v1/aliases/{alias}")
async def set_alias(body: AliasRequest, service: Service, alias: str = Path(
        pattern=ALIAS_REGEX, max_length=ALIAS_MAX,
        description="Alias name: lower-case letters, digits, '_', '-', starting with a "
        "letter; not 'base'.")) -> AliasState:
    """Point ``alias`` (e.g. production) at a version and load it: a promotion.
    404: no such version; 400 ``base_model_not_adapter``: alias or target 'base'."""
    if alias == BASE_NAME:
        raise ApiError(400, "base_model_not_adapter",
                       "'base' names the base model; it cannot be an alias")
    await service.call_backend(service.load(body.adapter, "alias"))
    try:
        service.registry.set_alias(alias, service.classifier.resolve(body.adapter).name)
    except InvalidAdapterName as error:
        raise ApiError(400, "invalid_alias", str(error)) from error
    return AliasState(alias=alias, adapter=service.registry.aliases()[alias])


@open_routes.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@open_routes.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(service: Service):
    if not service.ready:
        return error_response(503, "not_ready", f"warming up: {service.warmup_error}")
    backend = service.classifier.backend
    if not await backend.healthy():
        service.metrics.backend_up.set(0)
        return error_response(503, "backend_unavailable",
                              f"the {backend.name} backend does not answer")
    return {"status": "ready", "backend": backend.name}


@open_routes.get("/metrics", include_in_schema=False)
async def prometheus_metrics(service: Service) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- the app -----------------------------------------------------------------------

@asynccontextmanager
async def _lifespan(app: FastAPI):
    service: ClassificationService = app.state.service
    task = asyncio.create_task(service.warm_up())
    yield
    task.cancel()
    await service.classifier.backend.close()


def _openapi_with_batch_limit(app: FastAPI, max_batch: int) -> None:
    """The generated document, plus what only this instance knows: the batch limit."""
    generated = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generated()
            fields = schema["components"]["schemas"]["ClassifyRequest"]["properties"]
            for field in ("articles", "items"):
                for branch in fields[field].get("anyOf", [fields[field]]):
                    if branch.get("type") == "array":
                        branch["maxItems"] = max_batch
        return app.openapi_schema

    app.openapi = openapi


def create_app(classifier: SignalClassifier, max_batch: int = 64,
               max_request_bytes: int = 8 * 1024 * 1024,
               warmup_retry_s: float = 2.0, preload: Sequence[str] = (),
               admin_token: str | None = None, watch_interval_s: float | None = 2.0,
               classify_token: str | None = None) -> FastAPI:
    """The FastAPI app over ``classifier``.

    At start it warms up in the background: loads the ``preload`` adapters and the
    aliased ones, and classifies one article (vLLM's first request is slow); ``/ready``
    answers 200 only after that succeeded. Then, every ``watch_interval_s`` seconds
    (None: never), it loads registry versions that appeared and alias targets that
    changed. ``admin_token`` enables the admin routes; ``classify_token``, when given,
    closes classification and the adapter list to callers without it (or the admin token).
    """
    service = ClassificationService(
        classifier, max_batch, warmup_retry_s, preload, watch_interval_s,
        anyone_loads=admin_token is None and classify_token is None)
    app = FastAPI(
        title="Newsletter signals: classification API",
        description="Flags investment signals in news items with a LoRA-tuned LLM served by vLLM.",
        version="0.1.0", lifespan=_lifespan,
        responses={code: {"model": ErrorResponse}
                   for code in (400, 401, 403, 404, 413, 422, 502, 503, 504)},
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    install_error_handlers(app, lambda kind: service.metrics.errors.labels(kind).inc())
    for routes in (classify_routes, admin_routes, open_routes):
        app.include_router(routes)
    _openapi_with_batch_limit(app, max_batch)
    # Added last = outermost: the token is checked before the body is even read. The
    # rules are the scopes the routes declare.
    app.add_middleware(ScopeGuard, scopes=[replace(CLASSIFY_SCOPE, token=classify_token),
                                           replace(ADMIN_SCOPE, token=admin_token)],
                       rules=rules_from_routes(app))
    return app
