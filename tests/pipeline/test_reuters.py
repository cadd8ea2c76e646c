from datetime import datetime

from pipeline.dataset import load_split, read_manifest
from pipeline.reuters import load_labelled_articles, parse_date, parse_sgml

# Counts from the data README's temporal protocol.
README_WINDOWS = {"train": (8269, 0.173), "1987-04": (3255, 0.158), "1987-06": (733, 0.284)}


def test_counts_per_window_match_the_data_readme(reuters_dataset):
    manifest = read_manifest(reuters_dataset)
    assert set(manifest.splits) == set(README_WINDOWS)
    for split, (count, rate) in README_WINDOWS.items():
        stats = manifest.splits[split]
        assert stats.count == count, split
        assert round(stats.signal_rate, 3) == rate, split
    assert sum(s.count for s in manifest.splits.values()) == 12257
    assert str(manifest.splits["train"].date_to) == "1987-03-31"
    assert len(manifest.source_files) == 19


def test_split_files_hold_contract_articles(reuters_dataset):
    april = load_split(reuters_dataset, "1987-04")
    assert len(april) == 3255
    assert all(a.date_published.month == 4 and a.signal in (0, 1) for a in april)
    assert all(a.source == "reuters21578" for a in april)
    assert sum(a.signal for a in april) == sum("acq" in a.topics for a in april)


def test_rebuild_is_idempotent(reuters_dir, reuters_dataset):
    from pipeline.reuters import build_dataset

    before = read_manifest(reuters_dataset)
    assert build_dataset(reuters_dir, reuters_dataset) == before


def test_malformed_date_is_tolerated():
    assert parse_date("31-MAR-1987 605:12:19.12") == datetime(1987, 3, 31, 5, 12, 19)
    assert parse_date(" 7-APR-1987 16:22:00.0") == datetime(1987, 4, 7, 16, 22)
    assert parse_date("27-MAR-1987 00:02:59.13&#5;&#5;&#5;RM") == datetime(1987, 3, 27, 0, 2, 59)


def test_entities_control_characters_and_missing_bodies():
    sgml = """<REUTERS TOPICS="YES" NEWID="1"><DATE>26-FEB-1987 15:01:01.79</DATE>
<TOPICS><D>acq</D></TOPICS><TEXT>&#2;<TITLE>A &lt;B&gt; BUYS C</TITLE>
<BODY>A &amp; B said it bought C.&#3;
 Reuter
&#3;</BODY></TEXT></REUTERS>
<REUTERS TOPICS="YES" NEWID="2"><DATE>26-FEB-1987 15:02:01.79</DATE>
<TOPICS></TOPICS><TEXT TYPE="BRIEF">&#2;<TITLE>TITLE ONLY</TITLE></TEXT></REUTERS>
<REUTERS TOPICS="NO" NEWID="3"><DATE>26-FEB-1987 15:03:01.79</DATE>
<TOPICS></TOPICS><TEXT TYPE="UNPROC">&#2;raw wire text</TEXT></REUTERS>"""
    first, brief, unproc = parse_sgml(sgml)
    assert first.title == "A <B> BUYS C" and first.body == "A & B said it bought C."
    assert first.topics == ("acq",) and first.indexed
    assert brief.body == "" and brief.doc_type == "BRIEF" and brief.indexed
    assert not unproc.indexed and unproc.title == "" and unproc.body == "raw wire text"


def test_latin1_and_unindexed_articles(reuters_dir):
    articles = load_labelled_articles(reuters_dir)
    assert len(articles) == 12257  # TOPICS="NO"/"BYPASS" never become negatives
    assert any("é" in a.text or "ü" in a.text or "£" in a.text for a in articles)
    assert all(a.date_published is not None for a in articles)
    assert all(a.title or a.text for a in articles)  # <TEXT TYPE=...> and UNPROC bodies read
