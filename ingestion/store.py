"""The ingestion store: items, predictions and feedback in one SQL database (its tables:
:mod:`ingestion.schema`).

SQLAlchemy Core over any URL: SQLite by default (one file, WAL journal), PostgreSQL
(``postgresql+psycopg://...``) through the very same statements.

Exactly-once classification rests on two things the database guarantees:

* every item carries an outbox state per role (``state`` for the adapter analysts
  see, ``shadow_state`` for the shadow adapter): ``pending`` until its prediction is
  stored, then ``classified`` (or ``rejected`` when the API refuses the item itself);
* a batch's predictions and the state change are written in **one transaction**, and
  ``predictions`` has a unique (item, role) key.

A process killed in the middle of a batch therefore either committed the whole batch
or nothing of it; after a restart the uncommitted items are still ``pending`` and are
classified again, so each item ends with exactly one stored prediction per role. (The
classification API may have *answered* the lost batch once already: delivery to the
API is at-least-once, the stored effect exactly-once.)

Items are identified by ``(source, external_id)`` and by the content hash of their
normalised title and text (``pipeline.dedupe.content_hash``), both unique. Each
item's effective label (``label``) is decided from its feedback when feedback
arrives, so online metrics are plain grouped SQL over predictions joined to items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, case, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError

from ingestion.schema import (
    AWAITING_LINK,
    CLASSIFIED,
    DEAD_LETTER,
    NOT_ASKED,
    PENDING,
    REJECTED,
    SKIPPED,
    Role,
    classify_failures,
    feedback,
    from_db_time,
    item_aliases,
    item_links,
    items,
    label_requests,
    metadata,
    predictions,
    promotions,
    source_cursors,
    to_db_time,
    utcnow,
)
from pipeline.article import Article

if TYPE_CHECKING:  # the link stage's result type; its HTTP client is not needed here
    from pipeline.links import LinkProvenance

log = logging.getLogger(__name__)


def _link_columns(provenance: LinkProvenance) -> dict[str, Any]:
    """An ``item_links`` row's values: the fields dedupe and the views query, as
    columns, and the whole provenance as JSON."""
    return dict(canonical_url=provenance.canonical_url, text_origin=provenance.text_origin,
                fetch_status=provenance.fetch_status, final_url=provenance.final_url,
                http_status=provenance.http_status, extractor=provenance.extractor,
                provenance=provenance.model_dump(mode="json"))


# --- records handed out -------------------------------------------------------------

@dataclass(frozen=True)
class StoredItem:
    id: int
    source: str
    external_id: str
    article: Article
    published_at: datetime | None
    received_at: datetime


@dataclass(frozen=True)
class NewPrediction:
    item_id: int
    requested: str
    adapter: str
    p_signal: float
    threshold: float
    label: int
    truncated: bool


@dataclass(frozen=True)
class LabelCandidate:
    """An unlabelled, not yet requested item the label queue may pick."""

    item_id: int
    p_signal: float
    threshold: float
    disagrees: bool
    """The shadow role's version decided otherwise than the primary's."""


@dataclass(frozen=True)
class ConfusionRow:
    """Predictions of one adapter version in one role, grouped by (predicted, true) label."""

    adapter: str
    role: str
    predicted: int
    actual: int | None
    count: int
    latency_sum_s: float
    latency_count: int
    p_signal_sum: float = 0.0  # sum of the stored P(signal): expected positives (CBPE)


FeedbackOutcome = Literal["recorded", "duplicate", "conflict", "replaced"]


class Store:
    """Items, predictions and feedback behind one SQLAlchemy engine."""

    def __init__(self, url: str, label_priority: dict[str, int] | None = None,
                 clock: Callable[[], datetime] = utcnow):
        """``clock`` gives the time stamped on what is stored (reception, prediction,
        feedback): the wall clock, or a simulated one (``signals backtest``)."""
        self.url = make_url(url)
        self.clock = clock
        self.label_priority = dict(label_priority or {})
        self.engine = self._make_engine(url)
        metadata.create_all(self.engine)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for logs and manifests)."""
        return self.url.render_as_string(hide_password=True)

    def _make_engine(self, url: str) -> Engine:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # pysqlite opens transactions lazily on its own; let SQLAlchemy emit BEGIN
            # instead, so a write transaction can take the lock up front (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a killed process (not a power cut) without an fsync
            # per commit; a killed *process* is the failure the outbox is built for.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            # IMMEDIATE takes the write lock at BEGIN: two writers (the service and a
            # feedback import) then wait for each other instead of failing on upgrade.
            immediate = connection.get_execution_options().get("sqlite_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            if write:
                connection.execution_options(sqlite_write=True)
            with connection.begin():
                yield connection

    def close(self) -> None:
        self.engine.dispose()

    # --- items ------------------------------------------------------------------------

    def find_exact(self, source: str, external_id: str,
                   content_hash: str) -> tuple[int, str] | None:
        """``(item id, "repeat")`` when this (source, id) was seen before (a feed polled
        again), ``(item id, "exact")`` when the same content is stored; else None."""
        with self.transaction() as conn:
            row = conn.execute(select(items.c.id).where(
                items.c.source == source, items.c.external_id == external_id)).first()
            row = row or conn.execute(select(item_aliases.c.item_id).where(
                item_aliases.c.source == source,
                item_aliases.c.external_id == external_id)).first()
            if row is not None:
                return row[0], "repeat"
            row = conn.execute(select(items.c.id)
                               .where(items.c.content_hash == content_hash)).first()
        return (row[0], "exact") if row is not None else None

    def find_by_canonical_url(self, canonical_url: str) -> int | None:
        """The stored item whose article has this canonical URL (link stage), if any."""
        with self.transaction() as conn:
            row = conn.execute(select(item_links.c.item_id)
                               .where(item_links.c.canonical_url == canonical_url)
                               .order_by(item_links.c.item_id).limit(1)).first()
        return row[0] if row is not None else None

    def insert_item(self, article: Article, source: str, content_hash: str,
                    minhash: bytes | None, shadow: bool,
                    provenance: LinkProvenance | None = None, state: str = PENDING,
                    attempts: int = 0, last_error: str | None = None) -> tuple[int, bool]:
        """Store an accepted item; ``(id, True)``, or ``(existing id, False)`` when a
        concurrent writer stored the same item first (the unique keys decide).

        ``provenance`` (the link stage's ``LinkProvenance``) is stored in ``item_links``
        in the same transaction: its key fields as columns, all of it as JSON. ``state`` is ``pending``, or for a
        link-only item whose page is not read ``awaiting_link`` / ``skipped``
        (:mod:`ingestion.schema`); the shadow role follows it when it is asked."""
        now = to_db_time(self.clock())
        values = dict(
            source=source, external_id=str(article.id), content_hash=content_hash,
            title=article.title, text=article.text, link=article.link,
            published_at=to_db_time(article.published_utc()), received_at=now,
            record=article.to_record(), minhash=minhash, state=state,
            shadow_state=state if shadow else NOT_ASKED, attempts=attempts,
            last_error=last_error)
        try:
            with self.transaction(write=True) as conn:
                item_id = conn.execute(insert(items).values(**values)).inserted_primary_key[0]
                if provenance is not None:
                    conn.execute(insert(item_links).values(
                        item_id=item_id, **_link_columns(provenance)))
            return int(item_id), True
        except IntegrityError:
            existing = self.find_exact(source, str(article.id), content_hash)
            if existing is None:
                raise
            return existing[0], False

    def awaiting_link(self, limit: int) -> list[tuple[StoredItem, int]]:
        """The oldest link-only items waiting for their page, with the fetches made."""
        with self.transaction() as conn:
            rows = conn.execute(select(items).where(items.c.state == AWAITING_LINK)
                                .order_by(items.c.id).limit(limit)).all()
        return [(self._stored_item(row), row.attempts) for row in rows]

    def settle_link(self, item_id: int, provenance: LinkProvenance, *,
                    article: Article | None = None, minhash: bytes | None = None,
                    skip_reason: str | None = None) -> bool:
        """Record one more fetch of a waiting item's page: with ``article`` (its page was
        read) the item takes that text and becomes ``pending``; with ``skip_reason`` it
        is ``skipped`` for good; else it keeps waiting. Its ``content_hash`` stays the
        link's (its identity as received: the same link again is still a duplicate).
        False when the item was no longer waiting (settled by another process)."""
        values: dict[str, Any] = {"attempts": items.c.attempts + 1,
                                  "last_error": provenance.detail or provenance.fetch_status}
        followed = case((items.c.shadow_state == NOT_ASKED, NOT_ASKED), else_=PENDING)
        if article is not None:
            values.update(title=article.title, text=article.text, record=article.to_record(),
                          minhash=minhash, state=PENDING, shadow_state=followed, attempts=0,
                          last_error=None,
                          published_at=to_db_time(article.published_utc()))
        elif skip_reason is not None:
            values.update(state=SKIPPED, last_error=skip_reason[:2000], shadow_state=case(
                (items.c.shadow_state == NOT_ASKED, NOT_ASKED), else_=SKIPPED))
        with self.transaction(write=True) as conn:
            changed = conn.execute(update(items).where(
                items.c.id == item_id, items.c.state == AWAITING_LINK).values(values)).rowcount
            if changed:
                conn.execute(update(item_links).where(item_links.c.item_id == item_id)
                             .values(**_link_columns(provenance)))
        return bool(changed)

    def signatures(self) -> Iterator[tuple[int, bytes]]:
        """(item id, stored MinHash) of every item, oldest first, for the dedupe index."""
        with self.transaction() as conn:
            result = conn.execute(select(items.c.id, items.c.minhash)
                                  .where(items.c.minhash.is_not(None)).order_by(items.c.id))
            yield from ((row.id, row.minhash) for row in result)

    def _stored_item(self, row: Any) -> StoredItem:
        return StoredItem(id=row.id, source=row.source, external_id=row.external_id,
                          article=Article.from_record(row.record),
                          published_at=from_db_time(row.published_at),
                          received_at=from_db_time(row.received_at))

    def pending(self, role: Role, limit: int) -> list[StoredItem]:
        """The oldest items still waiting for a ``role`` prediction."""
        column = items.c.state if role == "primary" else items.c.shadow_state
        with self.transaction() as conn:
            rows = conn.execute(select(items).where(column == PENDING)
                                .order_by(items.c.id).limit(limit)).all()
        return [self._stored_item(row) for row in rows]

    def pending_count(self, role: Role) -> int:
        column = items.c.state if role == "primary" else items.c.shadow_state
        with self.transaction() as conn:
            return conn.execute(select(func.count()).where(column == PENDING)).scalar_one()

    def item_count(self) -> int:
        with self.transaction() as conn:
            return conn.execute(select(func.count()).select_from(items)).scalar_one()

    def record_predictions(self, role: Role, new: Sequence[NewPrediction]) -> int:
        """Store a batch's predictions and mark the items done, in one transaction.

        Items no longer pending (classified by an earlier run) are left alone, so a
        batch that is recorded twice still leaves one prediction per item and role.
        Returns how many predictions were stored.
        """
        column = items.c.state if role == "primary" else items.c.shadow_state
        state_field = column.name
        now = self.clock()
        stored = 0
        with self.transaction(write=True) as conn:
            published = dict(conn.execute(
                select(items.c.id, items.c.published_at)
                .where(items.c.id.in_([p.item_id for p in new]), column == PENDING)).all())
            for prediction in new:
                if prediction.item_id not in published:
                    continue
                published_at = from_db_time(published[prediction.item_id])
                latency = (now - published_at).total_seconds() if published_at else None
                conn.execute(insert(predictions).values(
                    item_id=prediction.item_id, role=role, requested=prediction.requested,
                    adapter=prediction.adapter, p_signal=prediction.p_signal,
                    threshold=prediction.threshold, label=prediction.label,
                    truncated=prediction.truncated, predicted_at=to_db_time(now),
                    publication_latency_s=latency))
                conn.execute(update(items).where(items.c.id == prediction.item_id)
                             .values({state_field: CLASSIFIED, "last_error": None}))
                stored += 1
        return stored

    def record_failure(self, role: Role, item_ids: Sequence[int], error: str,
                       reject: bool) -> None:
        """Count a failed attempt; ``reject`` takes the items out of the queue for good
        (the API refused the item itself, so retrying cannot help)."""
        column = items.c.state if role == "primary" else items.c.shadow_state
        values: dict[str, Any] = {"attempts": items.c.attempts + 1, "last_error": error[:2000]}
        if reject:
            values[column.name] = REJECTED
        with self.transaction(write=True) as conn:
            conn.execute(update(items).where(items.c.id.in_(list(item_ids)), column == PENDING)
                         .values(values))

    def record_item_failure(self, role: Role, item_ids: Sequence[int], error: str,
                            max_failures: int) -> list[int]:
        """Count a failure of the classification API on each item alone (see
        :data:`~ingestion.schema.DEAD_LETTER`); the ids that reached ``max_failures``
        now and left the queue."""
        column = items.c.state if role == "primary" else items.c.shadow_state
        now, dead = to_db_time(self.clock()), []
        with self.transaction(write=True) as conn:
            for item_id in item_ids:
                if conn.execute(select(items.c.id).where(
                        items.c.id == item_id, column == PENDING)).first() is None:
                    continue  # answered meanwhile (another replica) or gone
                key = and_(classify_failures.c.item_id == item_id,
                           classify_failures.c.role == role)
                count = conn.execute(select(classify_failures.c.failures).where(key)).scalar()
                if count is None:
                    count = 1
                    conn.execute(insert(classify_failures).values(
                        item_id=item_id, role=role, failures=1, last_error=error[:2000],
                        failed_at=now))
                else:
                    count += 1
                    conn.execute(update(classify_failures).where(key).values(
                        failures=count, last_error=error[:2000], failed_at=now))
                values: dict[str, Any] = {"attempts": items.c.attempts + 1,
                                          "last_error": error[:2000]}
                if count >= max_failures:
                    values[column.name] = DEAD_LETTER
                    dead.append(item_id)
                conn.execute(update(items).where(items.c.id == item_id).values(values))
        return dead

    def dead_letters(self, role: Role | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Items out of the queue after repeated failures of their own, newest first."""
        query = (select(items.c.id, items.c.source, items.c.external_id, items.c.title,
                        classify_failures.c.role, classify_failures.c.failures,
                        classify_failures.c.last_error, classify_failures.c.failed_at)
                 .join(classify_failures, classify_failures.c.item_id == items.c.id)
                 .where(case((classify_failures.c.role == "primary", items.c.state),
                             else_=items.c.shadow_state) == DEAD_LETTER)
                 .order_by(classify_failures.c.failed_at.desc(), items.c.id.desc())
                 .limit(limit))
        if role is not None:
            query = query.where(classify_failures.c.role == role)
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [{"item_id": r.id, "source": r.source, "external_id": r.external_id,
                 "title": r.title, "role": r.role, "failures": r.failures,
                 "last_error": r.last_error, "failed_at": _iso(r.failed_at)} for r in rows]

    def requeue_dead_letters(self, role: Role, item_ids: Sequence[int] | None = None) -> int:
        """Put dead-lettered items (all, or these) back in ``role``'s queue with their
        failure count reset; how many were requeued."""
        column = items.c.state if role == "primary" else items.c.shadow_state
        where = [column == DEAD_LETTER]
        if item_ids is not None:
            where.append(items.c.id.in_(list(item_ids)))
        with self.transaction(write=True) as conn:
            ids = [row[0] for row in conn.execute(select(items.c.id).where(*where))]
            if ids:
                conn.execute(update(items).where(items.c.id.in_(ids))
                             .values({column.name: PENDING}))
                conn.execute(classify_failures.delete().where(
                    classify_failures.c.item_id.in_(ids), classify_failures.c.role == role))
        return len(ids)

    # --- promotion gate (ingestion/promotion.py) --------------------------------------

    def paired_predictions(self, production: str, candidate: str,
                           since: datetime | None = None
                           ) -> list[tuple[int, float, int, float, int | None]]:
        """Items classified by ``production`` as primary and ``candidate`` as shadow
        (both predicted at or after ``since``): ``(production label, its P, candidate
        label, its P, effective label or None)``."""
        shadow = predictions.alias("shadow")
        query = (select(predictions.c.label, predictions.c.p_signal, shadow.c.label,
                        shadow.c.p_signal, items.c.label)
                 .join(items, items.c.id == predictions.c.item_id)
                 .join(shadow, shadow.c.item_id == predictions.c.item_id)
                 .where(predictions.c.role == "primary", predictions.c.adapter == production,
                        shadow.c.role == "shadow", shadow.c.adapter == candidate))
        if since is not None:
            query = query.where(predictions.c.predicted_at >= to_db_time(since),
                                shadow.c.predicted_at >= to_db_time(since))
        with self.transaction() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def add_promotion(self, decision: str, production: str, candidate: str,
                      figures: dict[str, Any], at: datetime) -> None:
        with self.transaction(write=True) as conn:
            conn.execute(insert(promotions).values(
                decided_at=to_db_time(at), decision=decision, production=production,
                candidate=candidate, figures=figures))

    def promotion_decisions(self, limit: int = 100,
                            decisions: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The gate's decisions, newest first (only ``decisions`` when given)."""
        query = select(promotions).order_by(promotions.c.id.desc()).limit(limit)
        if decisions is not None:
            query = query.where(promotions.c.decision.in_(list(decisions)))
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [{"decided_at": _iso(r.decided_at), "decision": r.decision,
                 "production": r.production, "candidate": r.candidate,
                 "figures": r.figures} for r in rows]

    # --- label queue (ingestion/label_queue.py) ---------------------------------------

    def label_candidates(self, limit: int) -> list[LabelCandidate]:
        """The primary role's newest predictions on items with no label that the queue
        has not handed out yet, each with whether the shadow role (another version)
        decided otherwise."""
        shadow = predictions.alias("shadow")
        query = (select(predictions.c.item_id, predictions.c.p_signal, predictions.c.threshold,
                        predictions.c.label, shadow.c.label.label("shadow_label"))
                 .join(items, items.c.id == predictions.c.item_id)
                 .outerjoin(shadow, and_(shadow.c.item_id == predictions.c.item_id,
                                         shadow.c.role == "shadow",
                                         shadow.c.adapter != predictions.c.adapter))
                 .outerjoin(label_requests, label_requests.c.item_id == items.c.id)
                 .where(predictions.c.role == "primary", items.c.label.is_(None),
                        label_requests.c.item_id.is_(None))
                 .order_by(predictions.c.id.desc()).limit(limit))
        with self.transaction() as conn:
            return [LabelCandidate(r.item_id, r.p_signal, r.threshold,
                                   r.shadow_label is not None and r.shadow_label != r.label)
                    for r in conn.execute(query)]

    def label_requests_since(self, since: datetime) -> int:
        with self.transaction() as conn:
            return conn.execute(select(func.count()).select_from(label_requests).where(
                label_requests.c.requested_at >= to_db_time(since))).scalar_one()

    def add_label_requests(self, picks: Sequence[tuple[int, str, float | None]],
                           at: datetime) -> None:
        """Record ``(item id, reason, p_inclusion)`` hand-outs (an id already handed out
        is left as it was)."""
        with self.transaction(write=True) as conn:
            known = {row[0] for row in conn.execute(select(label_requests.c.item_id).where(
                label_requests.c.item_id.in_([p[0] for p in picks])))}
            rows = [{"item_id": i, "requested_at": to_db_time(at), "reason": reason,
                     "p_inclusion": p} for i, reason, p in picks if i not in known]
            if rows:
                conn.execute(insert(label_requests), rows)

    def label_requests_list(self, open_only: bool, limit: int | None = None
                            ) -> list[dict[str, Any]]:
        """Hand-outs, oldest first, with the item's primary prediction and its label
        (None while unlabelled); ``open_only``: the unlabelled ones."""
        query = (select(label_requests, items.c.title, items.c.source, items.c.label,
                        predictions.c.p_signal, predictions.c.threshold,
                        predictions.c.label.label("predicted"))
                 .join(items, items.c.id == label_requests.c.item_id)
                 .join(predictions, and_(predictions.c.item_id == items.c.id,
                                         predictions.c.role == "primary"))
                 .order_by(label_requests.c.requested_at, label_requests.c.item_id))
        if open_only:
            query = query.where(items.c.label.is_(None))
        if limit is not None:
            query = query.limit(limit)
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [{"item_id": r.item_id, "title": r.title, "source": r.source,
                 "reason": r.reason, "p_inclusion": r.p_inclusion, "p_signal": r.p_signal,
                 "threshold": r.threshold, "predicted": r.predicted, "label": r.label,
                 "requested_at": _iso(r.requested_at)} for r in rows]

    def get_item(self, item_id: int) -> dict[str, Any] | None:
        """An item with its predictions and feedback (the analysts' detail view)."""
        with self.transaction() as conn:
            row = conn.execute(select(items).where(items.c.id == item_id)).first()
            if row is None:
                return None
            preds = conn.execute(select(predictions).where(predictions.c.item_id == item_id)
                                 .order_by(predictions.c.id)).all()
            votes = conn.execute(select(feedback).where(feedback.c.item_id == item_id)
                                 .order_by(feedback.c.id)).all()
            link_row = conn.execute(select(item_links.c.provenance)
                                    .where(item_links.c.item_id == item_id)).first()
        return {
            "id": row.id, "source": row.source, "external_id": row.external_id,
            "title": row.title, "text": row.text, "link": row.link,
            "published_at": _iso(row.published_at), "received_at": _iso(row.received_at),
            "state": row.state, "shadow_state": row.shadow_state, "attempts": row.attempts,
            "last_error": row.last_error, "label": row.label, "label_source": row.label_source,
            "predictions": [{"role": p.role, "requested": p.requested, "adapter": p.adapter,
                             "p_signal": p.p_signal, "threshold": p.threshold, "label": p.label,
                             "truncated": p.truncated, "predicted_at": _iso(p.predicted_at)}
                            for p in preds],
            "feedback": [{"source": f.source, "label": f.label, "note": f.note,
                          "received_at": _iso(f.received_at)} for f in votes],
            # None when the item did not go through the link stage (stage off).
            "link_provenance": link_row.provenance if link_row is not None else None,
        }

    def signals(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        """What analysts see: items the primary adapter labelled 1, newest first."""
        query = (select(items.c.id, items.c.source, items.c.title, items.c.link,
                        items.c.published_at, predictions.c.adapter, predictions.c.p_signal,
                        predictions.c.predicted_at)
                 .join(predictions, predictions.c.item_id == items.c.id)
                 .where(predictions.c.role == "primary", predictions.c.label == 1)
                 .order_by(predictions.c.predicted_at.desc(), items.c.id.desc()).limit(limit))
        if since is not None:
            query = query.where(predictions.c.predicted_at >= to_db_time(since))
        with self.transaction() as conn:
            rows = conn.execute(query).all()
        return [{"id": r.id, "source": r.source, "title": r.title, "link": r.link,
                 "published_at": _iso(r.published_at), "adapter": r.adapter,
                 "p_signal": r.p_signal, "predicted_at": _iso(r.predicted_at)} for r in rows]

    # --- feedback ---------------------------------------------------------------------

    def find_items_by_external_id(self, external_id: str,
                                  source: str | None = None) -> list[int]:
        """Stored items with this source id, directly or as the copy of one (at most 2:
        enough to tell unique from ambiguous)."""
        direct = select(items.c.id).where(items.c.external_id == external_id)
        copies = select(item_aliases.c.item_id).where(item_aliases.c.external_id == external_id)
        if source is not None:
            direct = direct.where(items.c.source == source)
            copies = copies.where(item_aliases.c.source == source)
        with self.transaction() as conn:
            found = [row[0] for row in conn.execute(direct.limit(2))]
            found += [row[0] for row in conn.execute(copies.limit(2))]
        return list(dict.fromkeys(found))[:2]

    def add_alias(self, source: str, external_id: str, item_id: int, kind: str,
                  similarity: float) -> bool:
        """Remember that (source, external_id) is a copy of ``item_id``; False when that
        id was already known (as an item or a copy)."""
        with self.transaction(write=True) as conn:
            known = conn.execute(select(items.c.id).where(
                items.c.source == source, items.c.external_id == external_id)).first()
            known = known or conn.execute(select(item_aliases.c.id).where(
                item_aliases.c.source == source,
                item_aliases.c.external_id == external_id)).first()
            if known is not None:
                return False
            conn.execute(insert(item_aliases).values(
                source=source, external_id=external_id, item_id=item_id, kind=kind,
                similarity=similarity, seen_at=to_db_time(self.clock())))
        return True

    def item_exists(self, item_id: int) -> bool:
        with self.transaction() as conn:
            return conn.execute(select(items.c.id).where(items.c.id == item_id)).first() is not None

    def _priority(self, source: str | None) -> int:
        return self.label_priority.get(source, 1) if source is not None else 0

    def add_feedback(self, item_id: int, label: int, source: str, note: str | None = None,
                     replace: bool = False) -> FeedbackOutcome:
        """Record one label source's verdict on an item and update its effective label.

        One verdict per (item, source): the same verdict again is a ``duplicate`` (no
        change), a different one a ``conflict`` unless ``replace``. The effective label
        is the verdict of the highest-priority source; among equals the latest wins.
        Raises ``KeyError`` for an unknown item.
        """
        now = to_db_time(self.clock())
        with self.transaction(write=True) as conn:
            item = conn.execute(select(items.c.id, items.c.label_source)
                                .where(items.c.id == item_id)).first()
            if item is None:
                raise KeyError(item_id)
            existing = conn.execute(select(feedback.c.id, feedback.c.label).where(
                feedback.c.item_id == item_id, feedback.c.source == source)).first()
            if existing is not None and existing.label == label:
                return "duplicate"
            if existing is not None and not replace:
                return "conflict"
            if existing is not None:
                conn.execute(update(feedback).where(feedback.c.id == existing.id)
                             .values(label=label, note=note, received_at=now))
                outcome: FeedbackOutcome = "replaced"
            else:
                conn.execute(insert(feedback).values(item_id=item_id, source=source, label=label,
                                                     note=note, received_at=now))
                outcome = "recorded"
            if self._priority(source) >= self._priority(item.label_source):
                conn.execute(update(items).where(items.c.id == item_id).values(
                    label=label, label_source=source, labelled_at=now))
        return outcome

    def items_without_feedback_from(self, source: str, published_before: datetime | None,
                                    limit: int) -> list[StoredItem]:
        """Items a label source has not judged yet (e.g. the trend rule, months later)."""
        judged = select(feedback.c.item_id).where(feedback.c.source == source)
        query = select(items).where(items.c.id.not_in(judged)).order_by(items.c.id).limit(limit)
        if published_before is not None:
            query = query.where(items.c.published_at <= to_db_time(published_before))
        with self.transaction() as conn:
            return [self._stored_item(row) for row in conn.execute(query)]

    def labelled_items(self, since: datetime | None = None,
                       until: datetime | None = None) -> list[tuple[StoredItem, int, str]]:
        """(item, effective label, label source) of labelled items, by publication time
        (reception time for undated items)."""
        when = func.coalesce(items.c.published_at, items.c.received_at)
        query = select(items).where(items.c.label.is_not(None)).order_by(when, items.c.id)
        if since is not None:
            query = query.where(when >= to_db_time(since))
        if until is not None:
            query = query.where(when < to_db_time(until))
        with self.transaction() as conn:
            return [(self._stored_item(r), r.label, r.label_source) for r in conn.execute(query)]

    # --- online metrics -----------------------------------------------------------------

    def confusion(self, since: datetime | None = None,
                  until: datetime | None = None) -> list[ConfusionRow]:
        """Predictions grouped by adapter version, role, predicted and effective label,
        made in ``[since, until)`` (by prediction time; None: unbounded)."""
        query = (select(predictions.c.adapter, predictions.c.role, predictions.c.label,
                        items.c.label.label("actual"), func.count().label("n"),
                        func.coalesce(func.sum(predictions.c.publication_latency_s), 0.0)
                        .label("latency_sum"),
                        func.count(predictions.c.publication_latency_s).label("latency_n"),
                        func.coalesce(func.sum(predictions.c.p_signal), 0.0).label("p_sum"))
                 .join(items, items.c.id == predictions.c.item_id)
                 .group_by(predictions.c.adapter, predictions.c.role, predictions.c.label,
                           items.c.label))
        conditions = []
        if since is not None:
            conditions.append(predictions.c.predicted_at >= to_db_time(since))
        if until is not None:
            conditions.append(predictions.c.predicted_at < to_db_time(until))
        if conditions:
            query = query.where(and_(*conditions))
        with self.transaction() as conn:
            return [ConfusionRow(r.adapter, r.role, r.label, r.actual, r.n,
                                 float(r.latency_sum), r.latency_n, float(r.p_sum))
                    for r in conn.execute(query)]

    # --- reports that join their own ground truth (signals backtest) ---------------------

    def prediction_rows(self, role: Role) -> list[dict[str, Any]]:
        """Every prediction of ``role``, oldest first, with its item's source id and
        effective label (None while unlabelled)."""
        query = (select(predictions.c.item_id, items.c.external_id, predictions.c.adapter,
                        predictions.c.p_signal, predictions.c.label, predictions.c.predicted_at,
                        items.c.label.label("actual"))
                 .join(items, items.c.id == predictions.c.item_id)
                 .where(predictions.c.role == role).order_by(predictions.c.id))
        with self.transaction() as conn:
            return [{"item_id": r.item_id, "external_id": r.external_id, "adapter": r.adapter,
                     "p_signal": r.p_signal, "label": r.label,
                     "predicted_at": from_db_time(r.predicted_at), "actual": r.actual}
                    for r in conn.execute(query)]

    # --- source cursors (e.g. the last IMAP UID read) ------------------------------------

    def get_cursor(self, source: str) -> str | None:
        with self.transaction() as conn:
            row = conn.execute(select(source_cursors.c.cursor)
                               .where(source_cursors.c.source == source)).first()
        return row.cursor if row else None

    def set_cursor(self, source: str, cursor: str) -> None:
        now = to_db_time(self.clock())
        with self.transaction(write=True) as conn:
            changed = conn.execute(update(source_cursors).where(source_cursors.c.source == source)
                                   .values(cursor=cursor, updated_at=now)).rowcount
            if not changed:
                conn.execute(insert(source_cursors).values(source=source, cursor=cursor,
                                                           updated_at=now))


def _iso(value: datetime | None) -> str | None:
    return from_db_time(value).isoformat() if value is not None else None
