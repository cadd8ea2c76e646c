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
from contextlib import asynccontextmanager

from fastapi import FastAPI, Path, Request, Security
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


# --- the app -----------------------------------------------------------------------

def create_app(classifier: SignalClassifier, max_batch: int = 64,
               max_request_bytes: int = 8 * 1024 * 1024,
               warmup_retry_s: float = 2.0, preload: list[str] = (),
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
    metrics = ApiMetrics()
    state = {"ready": False, "warmup_error": "warm-up not finished"}
    registry = classifier.registry
    seen_versions = {v.name for v in registry.list()}

    async def load(name: str, trigger: str) -> None:
        before = set(classifier.loaded)
        version = await classifier.ensure_loaded(name)
        seen_versions.add(version.name)  # dealt with: the watcher leaves it alone now
        if set(classifier.loaded) != before:
            metrics.adapter_loads.labels(trigger).inc()
        metrics.adapters_loaded.set(len(classifier.loaded))

    async def follow_registry() -> None:
        """Load new versions and alias targets; never sees half-written versions."""
        for alias, target in sorted(registry.aliases().items()):
            if target not in classifier.loaded:
                await load(target, "alias")
        for version in registry.list():
            if version.name not in seen_versions:
                seen_versions.add(version.name)
                await load(version.name, "watcher")

    async def warm_up() -> None:
        while True:
            try:
                for name in preload:
                    await load(name, "preload")
                await follow_registry()
                await classifier.classify([WARMUP_ARTICLE])
                state["ready"], state["warmup_error"] = True, None
                metrics.backend_up.set(1)
                log.info("warm-up done: ready")
                break
            except Exception as error:  # keep trying; /ready says why
                state["warmup_error"] = str(error)
                metrics.backend_up.set(0)
                await asyncio.sleep(warmup_retry_s)
        while watch_interval_s:
            await asyncio.sleep(watch_interval_s)
            try:
                await follow_registry()
            except Exception as error:  # a bad version must not stop the watcher
                log.warning("registry watcher: %s", error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(warm_up())
        yield
        task.cancel()
        await classifier.backend.close()

    app = FastAPI(
        title="Newsletter signals: classification API",
        description="Flags investment signals in news items with a LoRA-tuned LLM served by vLLM.",
        version="0.1.0", lifespan=lifespan,
        responses={code: {"model": ErrorResponse}
                   for code in (400, 401, 403, 404, 413, 422, 502, 503, 504)},
    )
    classify_scope = Scope("classify", classify_token, open_when_unset=True,
                           setting="SIGNALS_SERVE_CLASSIFY_TOKEN")
    admin_scope = Scope("admin", admin_token, open_when_unset=False,
                        setting="SIGNALS_SERVE_ADMIN_TOKEN")
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    classify_auth = [Security(bearer_docs(classify_scope))]
    admin_auth = [Security(bearer_docs(admin_scope))]
    app.state.classifier = classifier
    app.state.metrics = metrics

    install_error_handlers(app, lambda kind: metrics.errors.labels(kind).inc())

    async def call_backend(coro):
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

    anyone_loads = admin_token is None and classify_token is None

    async def refuse_unloaded(names: set[str | None], granted: frozenset[str]) -> None:
        """403 ``adapter_not_loaded`` for a named version that only the admin may load."""
        if anyone_loads or "admin" in granted:
            return
        aliases = registry.aliases()
        for name in sorted(n for n in names if n is not None and n not in aliases):
            version = classifier.resolve(name)  # 404 / 400 for unknown or invalid names
            if version is not None and version.name not in classifier.loaded:
                raise ApiError(403, "adapter_not_loaded", (
                    f"version {version.name!r} is in the registry but not loaded; name an "
                    "alias or a loaded version (GET /v1/adapters), or load it with the "
                    "admin route POST /v1/adapters/{name}/load"))

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=classify_auth)
    async def classify(request: ClassifyRequest, http: Request) -> ClassifyResponse:
        """Classify one article, a batch, or a mixed batch over several adapters.

        Empty articles (no title, no text) get an ``error`` entry in their place in
        ``results`` and the others are classified, unless ``strict`` is true (422).
        Naming a registry version that is not loaded needs the admin token (403
        ``adapter_not_loaded``) unless the service runs without tokens."""
        pairs = request.pairs
        if len(pairs) > max_batch:
            raise ApiError(422, "batch_too_large",
                           f"{len(pairs)} articles in one request; at most {max_batch}")
        await call_backend(refuse_unloaded({adapter for _, adapter in pairs},
                                           scopes_granted(http)))
        valid = [pair for pair in pairs if pair[0].content_problem() is None]
        started = time.perf_counter()
        results = iter(await call_backend(classifier.classify_mixed(
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

    @app.get("/v1/adapters", dependencies=classify_auth)
    async def list_adapters() -> dict:
        """Adapters in the registry with their manifests, the aliases, what is loaded;
        ``dtype_mismatch``: the version's calibration was fitted in another dtype than
        the backend computes in (``served_dtype``), so it may not hold (null: unknown)."""
        return {
            "adapters": [{"name": v.name, "loaded": v.name in classifier.loaded,
                          "manifest": v.manifest.to_json(),
                          "dtype_mismatch": classifier.dtype_mismatch(v)}
                         for v in registry.list()],
            "served_dtype": classifier.backend.dtype,
            "aliases": registry.aliases(),
            "loaded": list(classifier.loaded),
        }

    name_doc = "Adapter version name or alias in the registry (not 'base': 400)."

    @app.post("/v1/adapters/{name}/load", dependencies=admin_auth)
    async def load_adapter(name: str = adapter_path(name_doc)) -> AdapterState:
        """Hot-load a registry adapter (name or alias) into the backend; no restart.
        404: not in the registry; 400 ``base_model_not_adapter``: 'base'."""
        await call_backend(load(name, "admin"))
        return AdapterState(name=classifier.resolve(name).name, loaded=True)

    @app.post("/v1/adapters/{name}/unload", dependencies=admin_auth)
    async def unload_adapter(name: str = adapter_path(name_doc)) -> AdapterState:
        """Unload an adapter from the backend (it stays in the registry).
        404: not in the registry; 400 ``base_model_not_adapter``: 'base'."""
        version_name = await call_backend(classifier.unload(name))
        metrics.adapters_loaded.set(len(classifier.loaded))
        return AdapterState(name=version_name, loaded=False)

    @app.post("/v1/aliases/{alias}", dependencies=admin_auth)
    async def set_alias(body: AliasRequest, alias: str = Path(
            pattern=ALIAS_REGEX, max_length=ALIAS_MAX,
            description="Alias name: lower-case letters, digits, '_', '-', starting with a "
            "letter; not 'base'.")) -> AliasState:
        """Point ``alias`` (e.g. production) at a version and load it: a promotion.
        404: no such version; 400 ``base_model_not_adapter``: alias or target 'base'."""
        if alias == BASE_NAME:
            raise ApiError(400, "base_model_not_adapter",
                           "'base' names the base model; it cannot be an alias")
        await call_backend(load(body.adapter, "alias"))
        try:
            registry.set_alias(alias, classifier.resolve(body.adapter).name)
        except InvalidAdapterName as error:
            raise ApiError(400, "invalid_alias", str(error)) from error
        return AliasState(alias=alias, adapter=registry.aliases()[alias])

    original_openapi = app.openapi

    def openapi() -> dict:
        """The generated document, plus what only this instance knows: the batch limit."""
        if app.openapi_schema is None:
            schema = original_openapi()
            fields = schema["components"]["schemas"]["ClassifyRequest"]["properties"]
            for field in ("articles", "items"):
                for branch in fields[field].get("anyOf", [fields[field]]):
                    if branch.get("type") == "array":
                        branch["maxItems"] = max_batch
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready():
        if not state["ready"]:
            return error_response(503, "not_ready", f"warming up: {state['warmup_error']}")
        if not await classifier.backend.healthy():
            metrics.backend_up.set(0)
            return error_response(503, "backend_unavailable",
                                  f"the {classifier.backend.name} backend does not answer")
        return {"status": "ready", "backend": classifier.backend.name}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Added last = outermost: the token is checked before the body is even read. The
    # rules are the scopes the routes above declare.
    app.add_middleware(ScopeGuard, scopes=[classify_scope, admin_scope],
                       rules=rules_from_routes(app))
    return app
