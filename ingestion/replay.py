"""Replay: a dated dataset served as a live RSS feed, its labels sent as late feedback.

``signals ingest replay`` takes a dataset split (e.g. Reuters articles after the
training window) and plays it back in time order on a compressed clock: an article
published ``t`` after the first one appears in the feed ``t / speed`` after the replay
started, with that wall time as its ``pubDate`` (so publication-to-prediction
latency and the 1/7/30-day windows behave as live; ``keep_dates`` gives the original
dates instead, e.g. to export a dataset with them). Its label (the dataset's ``signal``)
is posted to the ingestion service's ``/v1/feedback`` ``label_delay`` (dataset time)
after publication, as label source ``replay``: the delayed verdicts real analysts and
trend rules give. Point ``signals ingest run`` at the feed and the whole loop (feed,
ingestion, classification, store, late feedback, online precision/recall, drift) runs
on one machine and can be watched on the dashboards.

Routes: ``GET /feed.xml`` (RSS 2.0, the latest ``feed_size`` published items, newest
first, as real feeds do), ``GET /status`` (progress), ``GET /health``.
"""

from __future__ import annotations

import asyncio
import html
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from fastapi import FastAPI
from fastapi.responses import Response
from feedgen.feed import FeedGenerator

from pipeline.article import Article
from ingestion.schema import utcnow

log = logging.getLogger(__name__)

GUID_PREFIX = "replay-"
FEEDBACK_SOURCE = "replay"


@dataclass(frozen=True)
class ReplayItem:
    article: Article
    guid: str
    published_at: datetime
    """Wall-clock publication time on the replay clock (when it appears in the feed)."""
    feed_date: datetime
    """The ``pubDate`` the feed gives it: ``published_at``, or the original date."""
    label_at: datetime
    """Wall-clock time its label is sent as feedback."""


class Replay:
    """A dataset's articles on a compressed clock."""

    def __init__(self, articles: list[Article], speed: float, label_delay: timedelta,
                 started_at: datetime | None = None, feed_size: int = 500,
                 keep_dates: bool = False):
        dated = [a for a in articles if a.date_published is not None]
        if not dated:
            raise ValueError("nothing to replay: no article has a date_published")
        if speed <= 0:
            raise ValueError(f"speed must be > 0 (dataset seconds per second), got {speed}")
        dated.sort(key=lambda a: (a.published_utc(), str(a.id)))
        self.speed = speed
        self.label_delay = label_delay
        self.started_at = started_at or utcnow()
        self.origin = dated[0].published_utc()
        self.feed_size = feed_size
        self.items = [ReplayItem(
            article=a, guid=f"{GUID_PREFIX}{a.id}",
            published_at=self.wall_time(a.published_utc()),
            feed_date=a.published_utc() if keep_dates else self.wall_time(
                a.published_utc()),
            label_at=self.wall_time(a.published_utc() + label_delay)) for a in dated]
        self.undated = len(articles) - len(dated)

    def wall_time(self, dataset_time: datetime) -> datetime:
        return self.started_at + (dataset_time - self.origin) / self.speed

    def published(self, now: datetime) -> list[ReplayItem]:
        return [item for item in self.items if item.published_at <= now]

    def rss(self, now: datetime, title: str = "Replay",
            link: str = "http://replay.local/") -> bytes:
        """The feed as it reads at ``now`` (RSS 2.0, written by feedgen)."""
        feed = FeedGenerator()
        feed.title(title)
        feed.link(href=link)
        feed.description(f"Replay of {len(self.items)} dated articles at {self.speed:g}x")
        for item in reversed(self.published(now)[-self.feed_size:]):  # newest first
            entry = feed.add_entry(order="append")
            entry.title(item.article.title)
            if item.article.link:
                entry.link(href=item.article.link)
            entry.guid(item.guid, permalink=False)
            entry.pubDate(item.feed_date)
            entry.description(_as_html(item.article.text))
        return feed.rss_str(pretty=False)


def _as_html(text: str) -> str:
    """Plain text as the HTML a feed description carries: escaped (so ``<ACME CORP>``
    survives the reader's HTML-to-text step), one ``<p>`` per paragraph."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


class FeedbackSender:
    """Posts each replayed article's label once it is due, until the ingestion service
    has it: an item not ingested yet (404) is tried again on the next round, for at most
    ``give_up_after_s`` after the label was due."""

    def __init__(self, replay: Replay, ingest_url: str, give_up_after_s: float = 600.0,
                 batch: int = 200):
        self.replay = replay
        self.ingest_url = ingest_url.rstrip("/")
        self.give_up_after_s = give_up_after_s
        self.batch = batch
        self.delivered: dict[str, str] = {}
        """guid -> outcome (recorded, duplicate, replaced, conflict, given_up)."""

    async def send_due(self, client: httpx.AsyncClient, now: datetime) -> int:
        due = [i for i in self.replay.items
               if i.label_at <= now and i.guid not in self.delivered
               and i.article.signal is not None]
        sent = 0
        for start in range(0, len(due), self.batch):
            chunk = due[start:start + self.batch]
            entries = [{"external_id": i.guid, "label": i.article.signal,
                        "source": FEEDBACK_SOURCE} for i in chunk]
            try:
                response = await client.post(f"{self.ingest_url}/v1/feedback",
                                             json={"feedback": entries})
                response.raise_for_status()
            except httpx.HTTPError as error:
                log.warning("replay: feedback not delivered (%s); will retry", error)
                return sent
            for item, answer in zip(chunk, response.json()["results"]):
                if answer["outcome"] in ("unknown_item", "ambiguous_item"):
                    if (now - item.label_at).total_seconds() > self.give_up_after_s:
                        log.warning("replay: %s never reached the ingestion store; its label "
                                    "is dropped", item.guid)
                        self.delivered[item.guid] = "given_up"
                    continue
                self.delivered[item.guid] = answer["outcome"]
                sent += 1
        return sent

    async def run(self, interval_s: float) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                await self.send_due(client, utcnow())
                await asyncio.sleep(interval_s)


def create_replay_app(replay: Replay, ingest_url: str | None = None,
                      feedback_interval_s: float = 1.0,
                      give_up_after_s: float = 600.0) -> FastAPI:
    """The replay feed; with ``ingest_url`` it also delivers the labels as feedback."""
    sender = FeedbackSender(replay, ingest_url, give_up_after_s) if ingest_url else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(sender.run(feedback_interval_s)) if sender else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(title="Newsletter signals: dataset replay feed", lifespan=lifespan)
    app.state.replay, app.state.sender = replay, sender

    @app.get("/feed.xml")
    async def feed() -> Response:
        return Response(replay.rss(utcnow()), media_type="application/rss+xml")

    @app.get("/status")
    async def status() -> dict:
        now = utcnow()
        outcomes: dict[str, int] = {}
        for outcome in (sender.delivered.values() if sender else ()):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return {"items": len(replay.items), "published": len(replay.published(now)),
                "labels_due": sum(i.label_at <= now for i in replay.items),
                "feedback": outcomes, "undated_skipped": replay.undated,
                "started_at": replay.started_at.isoformat(), "speed": replay.speed,
                "finished_at": replay.items[-1].label_at.isoformat()}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
