"""The ingestion store's tables, and how times are stored in them.

One SQLAlchemy ``MetaData`` that works on SQLite and PostgreSQL alike: ``items`` (with
an outbox state per role), ``predictions`` (unique per item and role), ``feedback``,
``item_aliases``, ``item_links`` and ``source_cursors``. Times are stored as naive UTC
(SQLite keeps no zone) and handed out as aware UTC. :mod:`ingestion.store` reads and
writes these tables; nothing else writes them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

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
    # Outbox states, one per role: pending -> classified | rejected (none: not asked).
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


# The largest item id the APIs accept: below SQLite's and PostgreSQL's 2**63 - 1, and
# exact as a JSON number (2**53 - 1): clients and generators that read numbers as
# doubles turn 2**63 - 1 into 9223372036854776000, which that limit refuses.
MAX_ITEM_ID = 2**53 - 1


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


def published_datetime(article: Article) -> datetime | None:
    """``date_published`` as aware UTC (a date is its midnight; naive is read as UTC)."""
    published = article.date_published
    if published is None:
        return None
    if not isinstance(published, datetime):
        published = datetime(published.year, published.month, published.day)
    if published.tzinfo is None:
        return published.replace(tzinfo=timezone.utc)
    return published.astimezone(timezone.utc)
