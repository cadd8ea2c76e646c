"""The stats report of a real dataset directory: numbers, markdown and a real PNG."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from pipeline.article import Article
from pipeline.dataset import temporal_splits, write_dataset
from pipeline.stats import cohens_kappa, dataset_stats, write_stats_report

UTC = timezone.utc


def vote(source: str, label: int | None) -> dict:
    return {"source": source, "label": label, "detail": {}}


def article(number: int, day: str, signal: int | None, votes: list[dict] | None = None,
            source: str = "wire") -> Article:
    fields = {"id": number, "title": f"Item {number}", "text": "Body.", "signal": signal,
              "date_published": datetime.fromisoformat(day).replace(tzinfo=UTC),
              "source": source}
    if votes is not None:
        fields["labels"] = votes
    return Article(**fields)


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    articles = [
        # train, April: 2 labelled, 1 signal; teacher and trend agree on 1 of 2
        article(1, "2024-04-02", 1, [vote("teacher", 1), vote("trend", 1)]),
        article(2, "2024-04-20", 0, [vote("teacher", 0), vote("trend", 1)]),
        # train, May: 3 articles, 2 labelled, 2 signals; trend abstains on 3
        article(3, "2024-05-01", 1, [vote("teacher", 1), vote("trend", None)], "mail"),
        article(4, "2024-05-09", 1, [vote("teacher", 1), vote("trend", 1)]),
        article(5, "2024-05-30", None),
        # test window June: 4 articles, 4 labelled, 1 signal, no votes
        article(6, "2024-06-01", 0), article(7, "2024-06-02", 0),
        article(8, "2024-06-03", 1), article(9, "2024-06-30", 0),
    ]
    directory = tmp_path / "tiny"
    write_dataset(directory, temporal_splits(articles, datetime(2024, 5, 31).date()),
                  {"label_rule": "teacher OR trend", "version": "abc123"})
    return directory


def test_counts_months_rates_and_agreement(small_dataset):
    stats = dataset_stats(small_dataset)
    train, june = stats["splits"]["train"], stats["splits"]["2024-06"]
    assert (train["count"], train["labelled"], train["signals"], train["signal_rate"]) == (
        5, 4, 3, 0.75)
    assert train["by_month"] == {
        "2024-04": {"count": 2, "labelled": 2, "signals": 1, "signal_rate": 0.5},
        "2024-05": {"count": 3, "labelled": 2, "signals": 2, "signal_rate": 1.0}}
    assert (train["date_from"], train["date_to"]) == ("2024-04-02", "2024-05-30")
    assert train["sources"] == {"wire": 4, "mail": 1}
    assert (june["count"], june["signals"], june["signal_rate"]) == (4, 1, 0.25)
    assert june["label_agreement"] is None
    assert stats["total"] == {"count": 9, "labelled": 8, "signals": 4, "signal_rate": 0.5}

    agreement = train["label_agreement"]
    assert agreement["articles_with_votes"] == 4
    assert agreement["sources"]["teacher"] == {
        "votes": 4, "signals": 3, "signal_rate": 0.75, "agreement_with_final": 1.0}
    assert agreement["sources"]["trend"] == {
        "votes": 3, "signals": 3, "signal_rate": 1.0, "agreement_with_final": 0.6667}
    pair = agreement["pairs"]["teacher vs trend"]
    # Both voted on 1, 2 and 4; they agree on 1 and 4. Trend always says 1, so chance
    # agreement equals observed agreement and kappa is 0.
    assert (pair["both_voted"], pair["agreement"], pair["cohens_kappa"]) == (3, 0.6667, 0.0)


def test_cohens_kappa_known_values():
    assert cohens_kappa([(1, 1), (0, 0), (1, 1), (0, 0)]) == 1.0
    assert cohens_kappa([(1, 0), (0, 1), (1, 0), (0, 1)]) == -1.0
    # 20 pairs: 8 (1,1), 7 (0,0), 2 (1,0), 3 (0,1): po 0.75, pe 0.5, kappa 0.5
    pairs = [(1, 1)] * 8 + [(0, 0)] * 7 + [(1, 0)] * 2 + [(0, 1)] * 3
    assert cohens_kappa(pairs) == 0.5
    assert cohens_kappa([]) is None and cohens_kappa([(1, 1), (1, 1)]) is None


def test_report_files_json_markdown_and_png(small_dataset, tmp_path):
    paths = write_stats_report(small_dataset, tmp_path / "report")
    stats = json.loads(paths["json"].read_text())
    assert stats == json.loads(json.dumps(dataset_stats(small_dataset)))
    markdown = paths["markdown"].read_text()
    assert "| train | 5 | 4 | 3 | 0.750 | 2024-04-02 | 2024-05-30 |" in markdown
    assert "| 2024-06 | 2024-06 | 4 | 4 | 1 | 0.250 |" in markdown
    assert "| train | teacher vs trend | 3 | 0.667 | 0.000 |" in markdown
    assert "Label rule: teacher OR trend" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["plot"]) as image:
        image.verify()
    with Image.open(paths["plot"]) as image:
        assert image.width >= 500 and image.height >= 500
        # Not a blank canvas: bars and lines were drawn.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10


def test_default_out_is_the_dataset_directory(small_dataset):
    paths = write_stats_report(small_dataset)
    assert {p.parent for p in paths.values()} == {small_dataset}
    assert all(p.is_file() for p in paths.values())


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing manifest.json"):
        dataset_stats(tmp_path / "nothing")
