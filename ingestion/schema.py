"""The ingestion store's tables, and how times are stored in them.

One SQLAlchemy ``MetaData`` that works on SQLite and PostgreSQL alike: ``items`` (with
an outbox state per role), ``predictions`` (unique per item and role), ``feedback``,
``item_aliases``, ``item_links`` and ``source_cursors``. Times are stored as naive UTC
(SQLite keeps no zone) and handed out as aware UTC. :mod:`ingestion.store` reads and
writes these tables; nothing else writes them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from pipeline.article import Article

Role = Literal["primary", "shadow"]
ROLES: tuple[Role, ...] = ("primary", "shadow")
PENDING, CLASSIFIED, REJECTED, NOT_ASKED = "pending", "classified", "rejected", "none"
AWAITING_LINK, SKIPPED = "awaiting_link", "skipped"
DEAD_LETTER = "dead_letter"
"""An item the classification API failed on by itself (a 5xx for that item alone while
others of its batch were answered) ``classify_max_failures`` times: out of the queue
until an operator requeues it (``classify_failures`` keeps the count and the error)."""
"""An item whose only content is its link, and whose page could not be fetched yet,
waits (``awaiting_link``) for the link stage to retry it (``attempts`` counts the
fetches); it becomes ``pending`` once its page is read, or ``skipped`` (the reason in
``last_error``) when the fetch cannot succeed or the attempts run out."""

metadata = MetaData()

items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("external_id", String(1000), nullable=False),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("link", Text),
    Column("published_at", DateTime),
    Column("received_at", DateTime, nullable=False),
    Column("record", JSON, nullable=False),
    Column("minhash", LargeBinary),
    # Outbox states, one per role: pending -> classified | rejected | dead_letter
    # (none: not asked);
    # a link-only item first waits: awaiting_link -> pending | skipped.
    Column("state", String(16), nullable=False),
    Column("shadow_state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    # Effective label, decided from the feedback (see Store.add_feedback).
    Column("label", Integer),
    Column("label_source", String(100)),
    Column("labelled_at", DateTime),
    UniqueConstraint("source", "external_id", name="uq_items_source_external_id"),
    Index("ix_items_state", "state"),
    Index("ix_items_shadow_state", "shadow_state"),
    Index("ix_items_external_id", "external_id"),
)

predictions = Table(
    "predictions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("role", String(16), nullable=False),
    Column("requested", String(200), nullable=False),
    Column("adapter", String(200), nullable=False),
    Column("p_signal", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("label", Integer, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("predicted_at", DateTime, nullable=False),
    Column("publication_latency_s", Float),
    UniqueConstraint("item_id", "role", name="uq_predictions_item_role"),
    Index("ix_predictions_predicted_at", "predicted_at"),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("source", String(100), nullable=False),
    Column("label", Integer, nullable=False),
    Column("note", Text),
    Column("received_at", DateTime, nullable=False),
    UniqueConstraint("item_id", "source", name="uq_feedback_item_source"),
)

# Copies that were not stored, pointing at the stored item they copy: feedback that
# names a copy (e.g. by its feed id) reaches the item that was classified.
item_aliases = Table(
    "item_aliases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("external_id", String(1000), nullable=False),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("similarity", Float, nullable=False),
    Column("seen_at", DateTime, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_item_aliases_source_external_id"),
    Index("ix_item_aliases_external_id", "external_id"),
)

# Failures of the classification API on one item alone (the dead letter's count):
# outages, token and adapter problems are the deployment's and never counted here.
classify_failures = Table(
    "classify_failures", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("failed_at", DateTime, nullable=False),
)

# Items handed to analysts by the label queue (ingestion/label_queue.py): why each was
# picked and, for a random pick, the chance it had to be drawn (for unbiased estimates).
label_requests = Table(
    "label_requests", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("requested_at", DateTime, nullable=False),
    Column("reason", String(16), nullable=False),
    Column("p_inclusion", Float),
    Index("ix_label_requests_requested_at", "requested_at"),
)

# Decisions of the promotion gate (ingestion/promotion.py), with their figures.
promotions = Table(
    "promotions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decided_at", DateTime, nullable=False),
    Column("decision", String(24), nullable=False),
    Column("production", String(200), nullable=False),
    Column("candidate", String(200), nullable=False),
    Column("figures", JSON, nullable=False),
)

# Where an item's text came from (the link stage, pipeline/links.py): one row per item
# that went through the stage. ``canonical_url`` is the article's identity, so the same
# story reached through two newsletters is recognised as one item (Intake).
item_links = Table(
    "item_links", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("canonical_url", Text),
    Column("text_origin", String(16), nullable=False),
    Column("fetch_status", String(32), nullable=False),
    Column("final_url", Text),
    Column("http_status", Integer),
    Column("extractor", String(100)),
    Column("provenance", JSON, nullable=False),
    Index("ix_item_links_canonical_url", "canonical_url"),
)

source_cursors = Table(
    "source_cursors", metadata,
    Column("source", String(100), primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)


# The largest item id the APIs accept: what every store's ``items.id`` holds. It is an
# ``Integer`` column, 32 bits on PostgreSQL (SERIAL): a larger id in a query is a
# "integer out of range" DataError there, a bare 500 (the PostgreSQL fuzz found it on
# GET /v1/items/{id}, feedback and requeue). It is also exact as a JSON number: clients
# and generators that read numbers as doubles turn 2**63 - 1 into 9223372036854776000.
MAX_ITEM_ID = 2**31 - 1


# --- time: stored as naive UTC (SQLite keeps no zone), handed out as aware UTC ----------

def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_db_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def from_db_time(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


EARLIEST_STORED = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST_STORED = datetime(2200, 1, 1, tzinfo=timezone.utc)
"""The publication dates an item may carry: both SQLite and PostgreSQL hold them as
naive UTC, and an aware date near year 1 or 9999 overflows in the conversion."""
MAX_EXTERNAL_ID_CHARS = 1000
"""``items.external_id``: a feed entry without a guid uses its link as its id."""
MAX_SOURCE_CHARS = 100
"""``items.source``."""


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _unencodable(value: Any) -> bool:
    """A string that is not Unicode text: a lone surrogate (JSON allows ``"\\ud800"``)
    has no UTF-8 form, so neither store, nor a JSON answer, can carry it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unencodable(k) or _unencodable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unencodable(v) for v in value)
    return False


def text_problem(value: Any) -> str | None:
    """Why no store can hold ``value`` (a string, or a record of them) as text, or None:
    a NUL character (PostgreSQL's text and JSON refuse it) or a lone surrogate (no UTF-8
    form). The one check for every caller-given string that reaches a query."""
    if _has_nul(value):
        return "a NUL character (no store keeps it)"
    if _unencodable(value):
        return "a lone surrogate: not Unicode text, no UTF-8 form (no store keeps it)"
    return None


def printable_id(external_id: str, limit: int = 80) -> str:
    """``external_id`` as an answer or a log line can carry it: cut at ``limit``
    characters (``...`` after), lone surrogates written as ``\\udXXX``."""
    shown = external_id if len(external_id) <= limit else external_id[:limit] + "..."
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")


def time_problem(value: datetime) -> str | None:
    """Why ``value`` (naive = UTC) is outside what the stores hold, or None."""
    try:
        utc = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    except (OverflowError, ValueError) as exc:
        return f"{value.isoformat()} cannot be converted to UTC ({exc})"
    if not EARLIEST_STORED <= utc < LATEST_STORED:
        return f"{utc.isoformat()} is outside {EARLIEST_STORED.year}..{LATEST_STORED.year - 1}"
    return None


def clamp_to_stored(value: datetime) -> datetime:
    """``value`` in UTC (naive = UTC), clamped into ``[EARLIEST_STORED, LATEST_STORED]``:
    a query bound before every storable time filters nothing, one at or after
    ``LATEST_STORED`` matches nothing. Any datetime is a valid bound: a value whose
    conversion to UTC leaves the calendar clamps by its year."""
    try:
        utc = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    except (OverflowError, ValueError):
        return EARLIEST_STORED if value.year < 5000 else LATEST_STORED
    return min(max(utc, EARLIEST_STORED), LATEST_STORED)


def storage_problem(article: Article, source: str) -> tuple[str, str] | None:
    """``(reason, message)`` when no store can hold the item as it is, else None.

    What both SQLite and PostgreSQL accept: a publication date between
    :data:`EARLIEST_STORED` and :data:`LATEST_STORED` (after conversion to UTC), an id of
    at most :data:`MAX_EXTERNAL_ID_CHARS` characters, a source name of at most
    :data:`MAX_SOURCE_CHARS`, and no NUL character in any text of the record
    (PostgreSQL's text and JSON refuse it) nor any lone surrogate (no UTF-8 form: the
    stores' drivers and the JSON answer fail on it). Such an item is refused, not altered: a
    changed id or text would no longer be the item its sender knows."""
    external_id = str(article.id)
    if len(external_id) > MAX_EXTERNAL_ID_CHARS:
        return "id_length", (f"id of {len(external_id)} characters; at most "
                             f"{MAX_EXTERNAL_ID_CHARS}")
    if len(source) > MAX_SOURCE_CHARS:
        return "source_length", f"source name of {len(source)} characters; at most {MAX_SOURCE_CHARS}"
    published = article.date_published
    if published is not None:
        if not isinstance(published, datetime):
            published = datetime(published.year, published.month, published.day)
        problem = time_problem(published)
        if problem is not None:
            return "date_range", f"date_published {problem}"
    record = article.to_record()
    if _has_nul(source) or _has_nul(record):
        return "nul_character", "a NUL character in the record (no store keeps it)"
    if _unencodable(source) or _unencodable(record):
        return "invalid_unicode", ("a lone surrogate in the record: not Unicode text, no "
                                   "UTF-8 form (no store keeps it)")
    return None
