"""The signal-classification HTTP API (FastAPI; OpenAPI at ``/docs``).

Routes owned here:

* ``POST /v1/classify``  one article or a list -> label, P(signal), adapter, threshold,
  truncated, per article
* ``GET  /v1/adapters``  adapters in the registry and which are loaded
* ``POST /v1/adapters/{name}/load``  hot-load a registry adapter
* ``GET  /health``  the process is up (liveness)
* ``GET  /ready``   warm-up done and the backend answers (readiness)
* ``GET  /metrics`` Prometheus metrics

Every failure answers with one shape, built by :func:`error_response`::

    {"error": {"type": "adapter_not_found", "message": "...", "details": [...]}}
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.article import Article
from serve.backends import AdapterLoadError, BackendTimeout, BackendUnavailable
from serve.classifier import BASE_NAME, SignalClassifier
from train.registry import AdapterNotFound, InvalidAdapterName

log = logging.getLogger(__name__)

WARMUP_ARTICLE = Article(id="warm-up", title="Warm-up", text="The service is starting.")


# --- request and response schemas ---------------------------------------------------

class ClassifyRequest(BaseModel):
    """One article (``article``) or several (``articles``), and how to classify them."""

    article: Article | None = None
    articles: list[Article] | None = None
    adapter: str | None = Field(
        default=None, description="Registry adapter name; omitted or 'base' = the base model.")
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="P(signal) at or above which the label is 1; default: the server's.")

    @model_validator(mode="after")
    def _one_or_many(self) -> ClassifyRequest:
        if (self.article is None) == (self.articles is None):
            raise ValueError("give exactly one of 'article' or 'articles'")
        for article in self.items:
            if not article.title.strip() and not article.text.strip():
                raise ValueError(f"article {article.id!r} is empty: it has neither title nor text")
        if self.articles is not None and not self.articles:
            raise ValueError("'articles' is empty")
        return self

    @property
    def items(self) -> list[Article]:
        return [self.article] if self.article is not None else list(self.articles or [])


class ArticleResult(BaseModel):
    id: str | int
    label: int = Field(description="1 investment signal, 0 not.")
    p_signal: float = Field(description="Softmax over the two label tokens' logits.")
    adapter: str = Field(description="Adapter used ('base' for the un-tuned model).")
    threshold: float
    truncated: bool = Field(description="True when the text was cut to fit the model.")


class ClassifyResponse(BaseModel):
    results: list[ArticleResult]


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- errors ------------------------------------------------------------------------

def error_response(status: int, kind: str, message: str,
                   details: list[Any] | None = None) -> JSONResponse:
    """The one error shape of the API."""
    body = ErrorResponse(error=ErrorBody(type=kind, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status)


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class BodySizeLimit:
    """ASGI middleware: reject bodies over ``max_bytes`` with 413, before parsing them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_response(413, "request_too_large",
                                 f"request body exceeds {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, "request_too_large",
                               f"request body exceeds {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited_receive, send)


# --- metrics -----------------------------------------------------------------------

class ApiMetrics:
    """Prometheus metrics of one app instance (own registry: several apps per process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("signals_classify_requests", "Classification requests by outcome",
                                ["adapter", "outcome"], registry=self.registry)
        self.articles = Counter("signals_classified_articles", "Articles classified by label",
                                ["adapter", "label"], registry=self.registry)
        self.errors = Counter("signals_api_errors", "API errors by kind", ["kind"],
                              registry=self.registry)
        self.latency = Histogram("signals_classify_latency_seconds",
                                 "Time to classify one request", ["adapter"],
                                 registry=self.registry,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("signals_classify_batch_size", "Articles per request",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.backend_up = Gauge("signals_backend_up", "1 when the model backend answers",
                                registry=self.registry)
        self.adapters_loaded = Gauge("signals_adapters_loaded", "Adapters loaded in the backend",
                                     registry=self.registry)


# --- the app -----------------------------------------------------------------------

def create_app(classifier: SignalClassifier, max_batch: int = 64,
               max_request_bytes: int = 8 * 1024 * 1024,
               warmup_retry_s: float = 2.0, preload: list[str] = ()) -> FastAPI:
    """The FastAPI app over ``classifier``; warms up in the background at start.

    Warm-up loads the ``preload`` adapters and classifies one article (vLLM's first
    request is slow); ``/ready`` answers 200 only after it succeeded.
    """
    metrics = ApiMetrics()
    state = {"ready": False, "warmup_error": "warm-up not finished"}

    async def warm_up() -> None:
        while True:
            try:
                for name in preload:
                    await classifier.ensure_loaded(name)
                await classifier.classify([WARMUP_ARTICLE])
                state["ready"], state["warmup_error"] = True, None
                metrics.backend_up.set(1)
                log.info("warm-up done: ready")
                return
            except Exception as error:  # keep trying; /ready says why
                state["warmup_error"] = str(error)
                metrics.backend_up.set(0)
                await asyncio.sleep(warmup_retry_s)

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
        responses={code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 502, 503, 504)},
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    app.state.classifier = classifier
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        metrics.errors.labels(exc.kind).inc()
        return error_response(exc.status, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            metrics.errors.labels("malformed_json").inc()
            where = errors[0].get("loc", ("body", "?"))[-1]
            reason = (errors[0].get("ctx") or {}).get("error", "invalid JSON")
            return error_response(400, "malformed_json",
                                  f"request body is not valid JSON: {reason} at position {where}")
        metrics.errors.labels("invalid_request").inc()
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        summary = "; ".join(
            f"{'.'.join(str(p) for p in d['loc'][1:]) or 'body'}: {d['msg']}" for d in details)
        return error_response(422, "invalid_request", summary, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, ApiError):  # raised while the body was read
            return await _api_error(request, exc.__cause__)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            metrics.errors.labels("bad_encoding").inc()
            return error_response(400, "bad_encoding",
                                  f"request body is not valid UTF-8: {exc.__cause__.reason} "
                                  f"at byte {exc.__cause__.start}")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.errors.labels(kind).inc()
        return error_response(exc.status_code, kind, str(exc.detail))

    async def call_backend(coro, adapter: str):
        try:
            return await coro
        except AdapterNotFound as error:
            raise ApiError(404, "adapter_not_found", str(error)) from error
        except InvalidAdapterName as error:
            raise ApiError(400, "invalid_adapter_name", str(error)) from error
        except BackendTimeout as error:
            metrics.requests.labels(adapter, "timeout").inc()
            raise ApiError(504, "backend_timeout", str(error)) from error
        except BackendUnavailable as error:
            metrics.backend_up.set(0)
            metrics.requests.labels(adapter, "unavailable").inc()
            raise ApiError(503, "backend_unavailable", str(error)) from error
        except AdapterLoadError as error:
            raise ApiError(502, "adapter_load_failed", str(error)) from error

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        """Classify one article or a batch with the base model or a registry adapter."""
        articles = request.items
        if len(articles) > max_batch:
            raise ApiError(422, "batch_too_large",
                           f"{len(articles)} articles in one request; at most {max_batch}")
        adapter = request.adapter or BASE_NAME
        started = time.perf_counter()
        results = await call_backend(
            classifier.classify(articles, request.adapter, request.threshold), adapter)
        metrics.latency.labels(adapter).observe(time.perf_counter() - started)
        metrics.batch.observe(len(articles))
        metrics.requests.labels(adapter, "ok").inc()
        metrics.backend_up.set(1)
        metrics.adapters_loaded.set(len(classifier.loaded))
        for result in results:
            metrics.articles.labels(adapter, str(result.label)).inc()
        return ClassifyResponse(results=[ArticleResult(**r.__dict__) for r in results])

    @app.get("/v1/adapters")
    async def list_adapters() -> dict:
        """Adapters in the registry, their manifests, and whether each is loaded."""
        return {"adapters": [
            {"name": v.name, "loaded": v.name in classifier.loaded, "manifest": v.manifest}
            for v in classifier.registry.list()]}

    @app.post("/v1/adapters/{name}/load")
    async def load_adapter(name: str) -> dict:
        """Hot-load a registry adapter into the backend (no restart)."""
        version = await call_backend(classifier.ensure_loaded(name), name)
        metrics.adapters_loaded.set(len(classifier.loaded))
        return {"name": version.name, "loaded": True}

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

    return app
