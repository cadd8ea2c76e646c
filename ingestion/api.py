"""The ingestion HTTP API over an :class:`~ingestion.service.IngestionService`.

Routes (plain functions in one router per scope, over one typed dependency, :data:`Service`:
the app's :class:`~ingestion.service.IngestionService`), put together by
:func:`create_ingest_app`:

* ``POST /v1/items``      push articles (the article contract); per-item status
* ``POST /v1/feedback``   one verdict or a bulk list (item id or source id, label, source)
* ``GET  /v1/items/{id}`` an item with its predictions and feedback
* ``GET  /v1/signals``    what analysts see: items the primary adapter flags, newest first
* ``GET  /v1/quality``    online quality per adapter version and window (JSON)
* ``GET  /v1/drift``      drift rules as last evaluated
* ``GET  /v1/promotions``    the promotion gate's decisions with their figures
* ``GET  /v1/label-queue``   items to label next, under a daily budget (``feedback``)
* ``GET  /v1/dead-letters``           items out of the queue after failures of their own
* ``POST /v1/dead-letters/requeue``   put them back (``admin``)
* ``GET  /health``, ``GET /metrics``

Scopes (``serve/auth.py``), checked before the body is read: ``write`` (push items),
``feedback`` (post verdicts), ``read`` (the GET routes above), each with its own token
(``SIGNALS_INGEST_WRITE_TOKEN``, ``..._FEEDBACK_TOKEN``, ``..._READ_TOKEN``) and open while
that token is unset; ``SIGNALS_INGEST_ADMIN_TOKEN`` grants all of them. Health and
metrics stay open. The ``admin`` scope (closed while its token is unset) also guards
requeueing the dead letter. Verdicts may claim only the label sources in
``feedback_sources`` (default ``analyst``) unless the admin token is presented, or no feedback
or admin token is set (``forbidden_source`` otherwise, see ``IngestConfig``).

Failures answer with the product's one error shape (``serve/errors.py``), the same as
the classification API's, and so do oversized bodies (413) and non-UTF-8 bodies.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.article import Article
from serve.auth import Scope, ScopeGuard, bearer_docs, rules_from_routes, scopes_granted
from serve.errors import ApiError, BodySizeLimit, ErrorResponse, install_error_handlers
from ingestion.config import IngestConfig
from ingestion.feedback import (ExternalId, FeedbackEntry, ItemId, ItemSource, LabelSource,
                                Note, Replace)
from ingestion.label_queue import LabelQueue, sampled_quality
from ingestion.online_metrics import online_quality, window_name
from ingestion.service import IngestionService
from ingestion.schema import LATEST_STORED, MAX_ITEM_ID, Role, clamp_to_stored

log = logging.getLogger(__name__)


# --- request schemas ------------------------------------------------------------------

class PushRequest(BaseModel):
    """Articles pushed by a client: exactly one of ``article`` (one) or ``articles``
    (several). An article with neither title nor text is answered in its place in
    ``results`` with status ``rejected`` and is not stored; the others are."""

    # Each form names its field with a non-null value ({"article": null} is no article).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["article"], "properties": {"article": {"type": "object"}}},
        {"required": ["articles"], "properties": {"articles": {"type": "array"}}}]})

    article: Article | None = None
    articles: list[Article] | None = Field(default=None, min_length=1)
    source: str = Field(default="push", min_length=1, max_length=100,
                        description="Source name stored with the items.")

    @model_validator(mode="after")
    def _exactly_one_form(self) -> PushRequest:
        if (self.article is None) == (self.articles is None):
            raise ValueError("give exactly one of 'article' or 'articles'")
        if self.articles is not None and not self.articles:
            raise ValueError("'articles' is empty")
        return self

    @property
    def all(self) -> list[Article]:
        return [self.article] if self.article is not None else list(self.articles or [])


class RequeueRequest(BaseModel):
    """Which dead-lettered items go back in the queue."""

    model_config = ConfigDict(extra="forbid")

    role: Role = "primary"
    item_ids: list[ItemId] | None = Field(default=None, min_length=1, max_length=10_000,
                                       description="Store ids; absent: all of the role.")


class FeedbackRequest(BaseModel):
    """One verdict (``item_id`` or ``external_id``, and ``label``), or a bulk list in
    ``feedback``: exactly one of the two forms."""

    # Each form says the other forms' fields are null: a body that names a single entry
    # and a list is neither form (schemathesis found every such mix the schema allowed).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["feedback"], "properties": {
            "feedback": {"type": "array"}, "item_id": {"type": "null"},
            "external_id": {"type": "null"}}},
        {"required": ["item_id", "label"], "properties": {
            "item_id": {"type": "integer"}, "label": {"type": "integer"},
            "external_id": {"type": "null"}, "feedback": {"type": "null"}}},
        {"required": ["external_id", "label"], "properties": {
            "external_id": {"type": "string"}, "label": {"type": "integer"},
            "item_id": {"type": "null"}, "feedback": {"type": "null"}}}]})

    feedback: list[FeedbackEntry] | None = Field(default=None, min_length=1)
    item_id: ItemId | None = None
    external_id: ExternalId | None = None
    item_source: ItemSource | None = None
    label: Literal[0, 1] | None = None
    source: LabelSource = "analyst"
    note: Note | None = None
    replace: Replace = False

    @model_validator(mode="after")
    def _single_or_bulk(self) -> FeedbackRequest:
        single = self.item_id is not None or self.external_id is not None
        if (self.feedback is not None) == single:
            raise ValueError("give either 'feedback' (a list) or one entry's fields")
        if self.feedback is not None and not self.feedback:
            raise ValueError("'feedback' is empty")
        if single and self.label is None:
            raise ValueError("'label' is required")
        return self

    def entries(self) -> list[FeedbackEntry]:
        if self.feedback is not None:
            return self.feedback
        return [FeedbackEntry(item_id=self.item_id, external_id=self.external_id,
                              item_source=self.item_source, label=self.label,
                              source=self.source, note=self.note, replace=self.replace)]


_FEEDBACK_STATUS = {"recorded": 200, "replaced": 200, "duplicate": 200,
                    "unknown_item": 404, "ambiguous_item": 409, "conflict": 409,
                    "forbidden_source": 403}


# --- what the routes share ------------------------------------------------------------

SCOPES = {
    "write": Scope("write", None, True, "SIGNALS_INGEST_WRITE_TOKEN"),
    "feedback": Scope("feedback", None, True, "SIGNALS_INGEST_FEEDBACK_TOKEN"),
    "read": Scope("read", None, True, "SIGNALS_INGEST_READ_TOKEN"),
    "admin": Scope("admin", None, False, "SIGNALS_INGEST_ADMIN_TOKEN"),
}
"""The API's scopes without their tokens (``IngestConfig`` gives those): ``write``,
``feedback`` and ``read`` are open while unset, ``admin`` is disabled."""


def _service(request: Request) -> IngestionService:
    return request.app.state.service


Service = Annotated[IngestionService, Depends(_service)]
"""The routes' typed dependency: the service of the app serving this request (its
config, store, metrics, feedback, drift and classify loops)."""


# --- the routes -------------------------------------------------------------------------

write_routes = APIRouter(dependencies=[Security(bearer_docs(SCOPES["write"]))])
feedback_routes = APIRouter(dependencies=[Security(bearer_docs(SCOPES["feedback"]))])
read_routes = APIRouter(dependencies=[Security(bearer_docs(SCOPES["read"]))])
admin_routes = APIRouter(dependencies=[Security(bearer_docs(SCOPES["admin"]))])
open_routes = APIRouter()


@write_routes.post("/v1/items")
async def push_items(request: PushRequest, service: Service):
    """Store pushed articles (deduplicated) for classification."""
    articles = request.all
    most = service.config.max_push_items
    if len(articles) > most:
        raise ApiError(422, "batch_too_large",
                       f"{len(articles)} items in one request; at most {most}")
    # Per item, as the classification API does: an empty article is answered in its
    # place and not stored (a link alone is content once the link stage is on).
    problems = [None if service.links is not None and a.link else a.content_problem()
                for a in articles]
    stored = await service.accept_async(
        [a for a, problem in zip(articles, problems) if problem is None], request.source)
    answers, stored_answers = [], iter(stored)
    for article, problem in zip(articles, problems):
        if problem is None:
            answer = next(stored_answers)
            if answer.reason is None:
                answers.append({k: v for k, v in answer.__dict__.items() if k != "reason"})
            else:  # no store can hold it (ingestion.schema.storage_problem)
                kind, message = answer.reason
                answers.append({"external_id": answer.external_id, "status": "rejected",
                                "item_id": None,
                                "error": {"type": kind, "message": message}})
        else:
            log.warning("pushed %s; rejected", problem)
            answers.append({"external_id": str(article.id), "status": "rejected",
                            "item_id": None, "error": {"type": "empty_article",
                                                       "message": problem}})
    return {"accepted": sum(a["status"] == "accepted" for a in answers),
            "duplicates": sum(a["status"] == "duplicate" for a in answers),
            "rejected": sum(a["status"] == "rejected" for a in answers),
            "results": answers}


@feedback_routes.post("/v1/feedback")
async def post_feedback(request: FeedbackRequest, http: Request, service: Service):
    """Record verdicts. One entry: 404 unknown item, 409 conflict, 403 a label
    source this token may not claim (``feedback_sources``), 200 otherwise
    (``outcome`` says recorded, replaced or duplicate). Bulk: 200 with one
    outcome per entry."""
    config = service.config
    entries = request.entries()
    if len(entries) > config.max_push_items:
        raise ApiError(422, "batch_too_large",
                       f"{len(entries)} feedback entries; at most {config.max_push_items}")
    # Only the admin token claims any label source, or anyone while no token is set.
    unbound = "admin" in scopes_granted(http) or (
        config.feedback_token is None and config.admin_token is None)
    sources = None if unbound else config.feedback_sources
    answers = [await asyncio.to_thread(service.feedback.record, e, sources)
               for e in entries]
    if request.feedback is None:
        answer = answers[0]
        status = _FEEDBACK_STATUS[answer["outcome"]]
        if status >= 400:
            kind = {"unknown_item": "item_not_found", "ambiguous_item": "ambiguous_item",
                    "conflict": "feedback_conflict",
                    "forbidden_source": "forbidden_source"}[answer["outcome"]]
            raise ApiError(status, kind, answer["message"])
        return answer
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer["outcome"]] = counts.get(answer["outcome"], 0) + 1
    return {"counts": counts, "results": answers}


@read_routes.get("/v1/items/{item_id}")
async def get_item(service: Service, item_id: int = Path(
        ge=1, le=MAX_ITEM_ID, description="Store id of the item.")):
    """An item with its predictions (both roles) and its feedback."""
    item = await asyncio.to_thread(service.store.get_item, item_id)
    if item is None:
        raise ApiError(404, "item_not_found", f"no stored item {item_id}")
    return item


@read_routes.get("/v1/signals")
async def list_signals(service: Service, limit: int = Query(50, ge=1, le=1000),
                       since: datetime | None = None):
    """Items the primary adapter flags as signals, newest prediction first; ``since``
    (any date-time; naive = UTC) keeps those predicted at or after it."""
    if since is not None:
        since = clamp_to_stored(since)  # the stores hold 1900..2199
        if since >= LATEST_STORED:
            return {"signals": []}
    return {"signals": await asyncio.to_thread(service.store.signals, since, limit)}


@read_routes.get("/v1/quality")
async def quality(service: Service,
                  window_days: float | None = Query(None, gt=0, le=36_500)):
    """Online quality per adapter version and role (all time without a window)."""
    window = timedelta(days=window_days) if window_days else None
    stats = await asyncio.to_thread(online_quality, service.store, window)
    return {"window": window_name(window_days) if window_days else "all",
            "adapters": [s.as_dict() for _, s in sorted(stats.items())]}


@read_routes.get("/v1/drift")
async def drift(service: Service):
    """Drift rules as last evaluated, and retraining requests made."""
    return {"rules": [r.__dict__ for r in service.drift.results],
            "retrains": [{**r.__dict__, "dataset_dir": str(r.dataset_dir)}
                         for r in service.drift.retrains]}


@read_routes.get("/v1/promotions")
async def promotions(service: Service, limit: int = Query(100, ge=1, le=1000)):
    """The promotion gate's decisions, newest first (``ingestion/promotion.py``):
    promote, rollback, keep, not_enough_labels, with the figures behind each."""
    return {"enabled": service.config.promotion.enabled,
            "decisions": await asyncio.to_thread(service.store.promotion_decisions,
                                                 limit)}


@feedback_routes.get("/v1/label-queue")
async def label_queue(service: Service, limit: int = Query(50, ge=1, le=1000)):
    """Items to label next (``ingestion/label_queue.py``): earlier picks still
    unlabelled, then new ones within today's budget, a share at random and the rest
    the most uncertain; ``sampled_quality``: precision/recall estimated from the
    labelled random picks (weighted by 1/p_inclusion, unbiased)."""
    queue = LabelQueue(service.store, service.config.label_budget_per_day,
                       service.config.label_random_share)
    answer = await asyncio.to_thread(queue.hand_out, limit)
    requests = await asyncio.to_thread(service.store.label_requests_list, False)
    return answer | {"sampled_quality": sampled_quality(requests)}


@read_routes.get("/v1/dead-letters")
async def dead_letters(service: Service, role: Role | None = None,
                       limit: int = Query(100, ge=1, le=1000)):
    """Items the classification API failed on by themselves ``classify_max_failures``
    times, newest failure first, with the last error."""
    return {"dead_letters": await asyncio.to_thread(service.store.dead_letters, role,
                                                    limit)}


@admin_routes.post("/v1/dead-letters/requeue")
async def requeue_dead_letters(body: RequeueRequest, service: Service):
    """Put dead-lettered items (all of a role, or the ids given) back in the queue,
    their failure count reset: after the backend was fixed."""
    count = await asyncio.to_thread(service.store.requeue_dead_letters, body.role,
                                    body.item_ids)
    if count:
        service.classify.work.set()
    log.info("requeued %d dead-lettered items (%s)", count, body.role)
    return {"requeued": count}


@open_routes.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@open_routes.get("/metrics", include_in_schema=False)
async def prometheus_metrics(service: Service) -> Response:
    body = await asyncio.to_thread(generate_latest, service.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# --- the app --------------------------------------------------------------------------

@asynccontextmanager
async def _lifespan(app: FastAPI):
    service: IngestionService = app.state.service
    config = service.config
    await service.start()
    log.info("ingestion: classifying with %s%s via %s; %d feeds, %d mailboxes, drop dir %s",
             config.adapter, f" (shadow {config.shadow_adapter})"
             if config.shadow_adapter else "", config.classifier_url, len(config.feeds),
             len(config.imap), config.drop_dir)
    yield
    await service.stop()


def create_ingest_app(config: IngestConfig, service: IngestionService | None = None) -> FastAPI:
    """The ingestion API; its lifespan runs the service's pollers and classifier loops."""
    service = service or IngestionService(config)
    app = FastAPI(title="Newsletter signals: ingestion service",
                  description="Feeds and newsletters in, classified signals and online "
                  "quality out.", version="0.1.0", lifespan=_lifespan,
                  responses={code: {"model": ErrorResponse}
                             for code in (400, 401, 403, 404, 409, 413, 422)})
    app.state.service = service
    install_error_handlers(app, lambda kind: service.metrics.api_errors.labels(kind).inc())
    tokens = {"write": config.write_token, "feedback": config.feedback_token,
              "read": config.read_token, "admin": config.admin_token}
    scopes = [replace(scope, token=tokens[name]) for name, scope in SCOPES.items()]
    for name in ("write", "feedback"):
        if tokens[name] is None and config.admin_token is None:
            log.warning("ingestion: %s is not set: anyone who can reach port %d may use "
                        "the '%s' routes", SCOPES[name].setting, config.port, name)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    for routes in (write_routes, feedback_routes, read_routes, admin_routes, open_routes):
        app.include_router(routes)
    # Added last = outermost: the token is checked before the body is even read. The
    # rules are the scopes the routes declare.
    app.add_middleware(ScopeGuard, scopes=scopes, rules=rules_from_routes(app))
    return app


def run_ingest_server(config: IngestConfig) -> int:
    """Serve the ingestion API and run the service until interrupted."""
    import uvicorn

    app = create_ingest_app(config)
    log.info("ingestion service on http://%s:%d (store %s)", config.host, config.port,
             app.state.service.store.safe_url)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
