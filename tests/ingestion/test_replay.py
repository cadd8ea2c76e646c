"""The replay feed, read back by the pipeline's own feed reader (no model needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ingestion.replay import Replay
from pipeline.article import Article
from pipeline.feeds import parse_feed


def test_replay_feed_is_rss_the_pipeline_reads_newest_first():
    day = datetime(1987, 4, 1, tzinfo=timezone.utc)
    articles = [Article(id=i, title=f"Acme <ACME> deal {i}", text=f"First part {i}.\n\nSecond.",
                        date_published=day + timedelta(hours=i), signal=i % 2,
                        link=f"http://example.com/{i}" if i else None)
                for i in range(5)]
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    replay = Replay(articles, speed=3600.0, label_delay=timedelta(days=1), started_at=started,
                    feed_size=3)
    # One dataset hour per wall second: at +2.5 s items 0, 1 and 2 are published.
    result = parse_feed(replay.rss(started + timedelta(seconds=2.5)), "replay")
    assert result.feed_format and not result.malformed and result.skipped == 0
    assert [a.id for a in result.articles] == ["replay-2", "replay-1", "replay-0"]
    newest = result.articles[0]
    assert newest.title == "Acme <ACME> deal 2"
    assert "First part 2." in newest.text and "Second." in newest.text
    assert newest.date_published == started + timedelta(seconds=2)
    assert str(newest.link) == "http://example.com/2" and result.articles[-1].link is None
    # feed_size caps the feed at the latest items, as real feeds do.
    later = parse_feed(replay.rss(started + timedelta(seconds=10)), "replay")
    assert [a.id for a in later.articles] == ["replay-4", "replay-3", "replay-2"]
