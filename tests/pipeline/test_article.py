from datetime import datetime

from pipeline.article import Article

# A record in the original newsletter dataset's format (all nine fields).
ORIGINAL_RECORD = {
    "id": 1042,
    "title": "Start-up unveils solid-state battery with twice the range",
    "date_published": "2023-03-14T09:30:00",
    "text": "A battery maker said on Tuesday its solid-state cells passed automotive tests...",
    "link": "https://example.com/newsletter/1042",
    "gpt_signal": 1,
    "topics": ["solid-state battery", "electric vehicles", "energy storage"],
    "growth": {
        "solid-state battery": {"3_years": 12.5, "5_years": 30.1, "10_years": 61.0},
        "electric vehicles": {"3_years": 40.0, "5_years": 55.2, "10_years": 80.3},
    },
    "signal": 1,
}


def test_original_record_round_trips_exactly():
    article = Article.from_record(ORIGINAL_RECORD)
    assert article.to_record() == ORIGINAL_RECORD
    assert article.date_published == datetime(2023, 3, 14, 9, 30)
    assert article.growth["solid-state battery"].five_years == 30.1


def test_unknown_fields_survive_and_product_fields_are_optional():
    record = {**ORIGINAL_RECORD, "newsletter": "Weekly Tech"}
    assert Article.from_record(record).to_record() == record
    minimal = Article(id="x", title="t")
    assert minimal.to_record() == {"id": "x", "title": "t"}
    assert minimal.signal is None and minimal.source is None


def test_one_publication_day_for_splits_windows_trends_and_the_store():
    """An item stamped 23:30 -05:00 on 31 March is 1 April in UTC. The dataset split and
    the validation window took the local date (31 March: training) while trends and the
    store took UTC (1 April): one article on two days. Now every place asks
    :meth:`Article.published_day`."""
    from datetime import date, datetime, timedelta, timezone

    from ingestion.schema import to_db_time
    from pipeline.dataset import temporal_splits
    from pipeline.trends import GrowthReport, topics_to_measure
    from classify.validation import split_off_validation

    late = Article(id="late", title="Acme bid", topics=["acme"], date_published=datetime(
        1987, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5))))
    naive = Article(id="naive", title="Beta", date_published=datetime(1987, 3, 31, 23, 30))
    bare = Article(id="bare", title="Gamma", date_published=date(1987, 3, 30))
    assert late.published_day() == date(1987, 4, 1)
    assert naive.published_day() == date(1987, 3, 31)  # a naive time is read as UTC
    assert bare.published_day() == date(1987, 3, 30)
    assert Article(id="undated", title="x").published_day() is None

    splits = temporal_splits([late, naive, bare], train_end=date(1987, 3, 31))
    assert [a.id for a in splits["1987-04"]] == ["late"]  # was in "train"
    assert [a.id for a in splits["train"]] == ["naive", "bare"]
    _, window, first, last = split_off_validation([late, naive, bare], days=1)
    assert (first, last) == (date(1987, 4, 1), date(1987, 4, 1))
    assert [a.id for a in window] == ["late"]
    assert topics_to_measure([late], GrowthReport()) == [("acme", date(1987, 4, 1))]
    assert to_db_time(late.published_utc()).date() == date(1987, 4, 1)
