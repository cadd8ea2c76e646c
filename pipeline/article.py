"""The article contract: the one record every part of the product passes around.

It is compatible with the records of the original newsletter dataset (JSON objects
with ``id, title, date_published, text, link, gpt_signal, topics, growth, signal``):
``Article.from_record(record).to_record() == record`` for such a record. Fields the
product adds (``source``, ``labels``) are optional and left out of a record that did
not have them.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Label = Literal[0, 1]


class TopicGrowth(BaseModel):
    """Google-Trends interest in one topic over the 3, 5 and 10 years before the article."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    three_years: float | None = Field(default=None, alias="3_years")
    five_years: float | None = Field(default=None, alias="5_years")
    ten_years: float | None = Field(default=None, alias="10_years")


class Article(BaseModel):
    """One news or newsletter item, with whatever labels are known for it."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    id: str | int = Field(description="Stable identifier within its source.")
    title: str = Field(default="", description="Headline; may be empty.")
    date_published: datetime | date | None = Field(
        default=None, description="When the item was published (drives temporal splits)."
    )
    text: str = Field(default="", description="Body as plain text (HTML already removed).")
    link: str | None = Field(default=None, description="Where the item can be read.")
    gpt_signal: Label | None = Field(
        default=None, description="The teacher LLM's verdict: 1 signal, 0 not."
    )
    topics: list[str] = Field(
        default_factory=list, description="Up to 10 topics, most specific first."
    )
    growth: dict[str, TopicGrowth] = Field(
        default_factory=dict, description="Trend interest per topic."
    )
    signal: Label | None = Field(
        default=None, description="The final label: 1 investment signal, 0 not, None unknown."
    )
    source: str | None = Field(default=None, description="Which feed/collection it came from.")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Article:
        """Parse a record of the original dataset's JSON format (or the product's own)."""
        return cls.model_validate(record)

    def content_problem(self) -> str | None:
        """Why the article cannot be classified, or ``None`` when it can.

        The one validity rule shared by the HTTP APIs and the importers: an article
        with neither title nor text carries nothing to classify, so the APIs refuse it
        and the importers skip it (counted, with this reason)."""
        if not self.title.strip() and not self.text.strip():
            return f"article {self.id!r} is empty: it has neither title nor text"
        return None

    def published_utc(self) -> datetime | None:
        """``date_published`` as an aware UTC datetime: a naive datetime is read as UTC,
        a bare date is its midnight UTC; None when the article has no date."""
        published = self.date_published
        if published is None:
            return None
        if not isinstance(published, datetime):
            published = datetime(published.year, published.month, published.day)
        if published.tzinfo is None:
            return published.replace(tzinfo=timezone.utc)
        return published.astimezone(timezone.utc)

    def published_day(self) -> date | None:
        """The UTC calendar day of publication: the one day rule of every split,
        validation window, trend lookup and store query (an item stamped 23:30 -05:00
        belongs to the next day everywhere); None when the article has no date."""
        published = self.published_utc()
        return None if published is None else published.date()

    def to_record(self) -> dict[str, Any]:
        """The JSON record: the original format's fields, plus any the product set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)
