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
