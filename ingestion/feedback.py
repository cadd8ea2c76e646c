"""Feedback: analysts' verdicts and later label sources, joined to stored items.

A verdict names an item by store id or by its source id; each label source gives at
most one verdict per item (a different one replaces it only when asked). Pipeline label
sources (the trend rule months after publication, a teacher LLM) vote through
:meth:`Feedback.apply_label_source`. The joins feed online quality and retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from pipeline.article import Article
from pipeline.labels import LabelVote
from ingestion.metrics import IngestMetrics
from ingestion.schema import MAX_EXTERNAL_ID_CHARS, MAX_ITEM_ID, MAX_SOURCE_CHARS, text_problem
from ingestion.store import Store

log = logging.getLogger(__name__)


def _storable(value: str) -> str:
    # these strings reach a query or a row as they are: a NUL or a lone surrogate would
    # be the driver's 500 (psycopg's DataError, an UnicodeEncodeError), so a 422 here
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"contains {problem}")
    return value


# The fields of a verdict, once: FeedbackEntry and the single form of the API's
# FeedbackRequest both use them.
ItemId = Annotated[int, Field(ge=1, le=MAX_ITEM_ID, description="Store id (from POST /v1/items).")]
ExternalId = Annotated[str, Field(min_length=1, max_length=MAX_EXTERNAL_ID_CHARS,
                                  description="The item's id in its source (feed guid, ...)."),
                       AfterValidator(_storable)]
ItemSource = Annotated[str, Field(max_length=MAX_SOURCE_CHARS,
                                  description="Source name, when external ids may clash."),
                       AfterValidator(_storable)]
LabelSource = Annotated[str, Field(min_length=1, max_length=100,
                                   description="Label source: analyst, trend, teacher, replay, ..."),
                        AfterValidator(_storable)]
Note = Annotated[str, Field(max_length=10_000), AfterValidator(_storable)]
Replace = Annotated[bool, Field(description="Replace this source's earlier, different verdict.")]


class FeedbackEntry(BaseModel):
    """One verdict on one stored item, named by exactly one of ``item_id`` or
    ``external_id``."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["item_id"], "properties": {"item_id": {"type": "integer"},
                                                 "external_id": {"type": "null"}}},
        {"required": ["external_id"], "properties": {"external_id": {"type": "string"},
                                                     "item_id": {"type": "null"}}}]})

    item_id: ItemId | None = None
    external_id: ExternalId | None = None
    item_source: ItemSource | None = None
    label: Literal[0, 1] = Field(description="1 investment signal, 0 not.")
    source: LabelSource = "analyst"
    note: Note | None = None
    replace: Replace = False

    @model_validator(mode="after")
    def _one_item_reference(self) -> FeedbackEntry:
        if (self.item_id is None) == (self.external_id is None):
            raise ValueError("give exactly one of 'item_id' or 'external_id'")
        return self


class Feedback:
    """Records verdicts on stored items and counts them by source and outcome."""

    def __init__(self, store: Store, metrics: IngestMetrics):
        self.store, self.metrics = store, metrics

    def record(self, entry: FeedbackEntry,
               sources: Collection[str] | None = None) -> dict[str, Any]:
        """Record one feedback entry; the answer names the outcome (and the item).
        ``sources``: the label sources the caller may claim (None: any); another one is
        ``forbidden_source``, before the item is even looked up."""
        if sources is not None and entry.source not in sources:
            self.metrics.feedback.labels(entry.source, "forbidden_source").inc()
            log.warning("feedback refused: this token may not claim label source %r",
                        entry.source)
            return {"outcome": "forbidden_source",
                    "message": f"this token may not give verdicts as {entry.source!r} "
                               f"(it may claim {sorted(sources)}: feedback_sources)"}
        if entry.item_id is not None:
            candidates = [entry.item_id] if self.store.item_exists(entry.item_id) else []
        else:
            candidates = self.store.find_items_by_external_id(entry.external_id,
                                                              entry.item_source)
        who = (f"item {entry.item_id}" if entry.item_id is not None
               else f"source id {entry.external_id!r}")
        if not candidates:
            self.metrics.feedback.labels(entry.source, "unknown_item").inc()
            log.warning("feedback from %s for unknown %s", entry.source, who)
            return {"outcome": "unknown_item", "message": f"no stored item with {who}"}
        if len(candidates) > 1:
            self.metrics.feedback.labels(entry.source, "ambiguous_item").inc()
            return {"outcome": "ambiguous_item",
                    "message": f"{who} matches several items; give item_source or item_id"}
        outcome = self.store.add_feedback(candidates[0], entry.label, entry.source,
                                          entry.note, entry.replace)
        self.metrics.feedback.labels(entry.source, outcome).inc()
        messages = {
            "recorded": "feedback recorded",
            "replaced": "earlier verdict of this source replaced",
            "duplicate": "this source already gave this verdict; nothing changed",
            "conflict": "this source already gave a different verdict; send replace=true "
                        "to change it",
        }
        if outcome in ("duplicate", "conflict"):
            log.info("feedback from %s for item %d: %s", entry.source, candidates[0], outcome)
        return {"outcome": outcome, "item_id": candidates[0], "message": messages[outcome]}

    def apply_label_source(self, source: str, vote: Callable[[Article], LabelVote | None],
                           published_before: datetime | None = None,
                           limit: int = 1000) -> dict[str, int]:
        """Run a pipeline label source over stored items it has not judged yet (e.g. the
        trend rule, months after publication); its votes become feedback. Abstentions
        are not recorded, so the source is asked again next time."""
        counts = {"voted": 0, "abstained": 0}
        for item in self.store.items_without_feedback_from(source, published_before, limit):
            result = vote(item.article)
            if result is None or result.label is None:
                counts["abstained"] += 1
                continue
            note = str(result.detail) if result.detail else None
            outcome = self.store.add_feedback(item.id, int(result.label), source, note)
            self.metrics.feedback.labels(source, outcome).inc()
            counts["voted"] += 1
        return counts
