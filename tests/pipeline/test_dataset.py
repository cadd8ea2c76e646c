"""The typed dataset manifest: what write_dataset writes reads back as attributes, a
copied dataset still loads, older manifests load, unknown fields are kept and a
malformed one is named."""

import json
import shutil
from datetime import date, datetime, timezone

import pytest

from pipeline.article import Article
from pipeline.dataset import (DatasetManifest, InvalidDatasetManifest, load_split,
                              read_manifest, temporal_splits, write_dataset)


def _article(i, day, signal):
    return Article(id=f"a{i}", title=f"title {i}", text=f"text {i}", signal=signal,
                   date_published=datetime.fromisoformat(day).replace(tzinfo=timezone.utc))


@pytest.fixture
def dataset(tmp_path):
    articles = [_article(1, "2024-05-02", 1), _article(2, "2024-05-20", 0),
                _article(3, "2024-06-03", None), _article(4, "2024-06-09", 1)]
    directory = tmp_path / "datasets" / "tiny"
    written = write_dataset(directory, temporal_splits(articles, date(2024, 5, 31)),
                            {"label_rule": "by hand", "train_end": "2024-05-31",
                             "future_section": {"kept": True}})
    return directory, written


def test_written_manifest_reads_back_typed(dataset):
    directory, written = dataset
    manifest = read_manifest(directory)
    assert manifest == written and isinstance(manifest, DatasetManifest)
    assert manifest.name == "tiny" and manifest.train_end == date(2024, 5, 31)
    train = manifest.splits["train"]
    assert (train.file, train.count, train.labelled, train.signals) == ("train.jsonl", 2, 2, 1)
    assert (train.date_from, train.date_to) == (date(2024, 5, 2), date(2024, 5, 20))
    assert manifest.splits["2024-06"].signal_rate == 1.0
    assert manifest.future_section == {"kept": True}
    stored = json.loads((directory / "manifest.json").read_text())
    # the JSON shape is what it was: ISO strings, provenance beside the splits
    assert stored["splits"]["train"]["date_from"] == "2024-05-02"
    assert stored["train_end"] == "2024-05-31" and stored["future_section"] == {"kept": True}
    assert stored["created_at"].endswith("+00:00")


def test_a_copied_dataset_loads_its_splits(dataset, tmp_path):
    directory, _ = dataset
    copy = tmp_path / "other-volume" / "tiny"
    shutil.copytree(directory, copy)
    shutil.rmtree(directory)
    assert [a.id for a in load_split(copy, "train")] == ["a1", "a2"]


def test_an_older_manifest_without_name_and_stats_loads(tmp_path):
    directory = tmp_path / "old-set"
    directory.mkdir()
    (directory / "train.jsonl").write_text("")
    (directory / "manifest.json").write_text(json.dumps(
        {"built_at": "2025-01-01", "splits": {"train": {"file": "train.jsonl"}}}))
    manifest = read_manifest(directory)
    assert manifest.name == "old-set" and manifest.version is None
    assert manifest.built_at == "2025-01-01" and manifest.splits["train"].count == 0
    assert load_split(directory, "train") == []


def test_a_malformed_manifest_names_the_field(tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps(
        {"name": "bad", "splits": {"train": {"file": "train.jsonl", "count": "many"}}}))
    with pytest.raises(InvalidDatasetManifest, match="manifest field 'splits.train.count'"):
        read_manifest(directory)
    (directory / "manifest.json").write_text("{")
    with pytest.raises(InvalidDatasetManifest, match="is not JSON"):
        read_manifest(directory)
    with pytest.raises(KeyError, match="has no split 'march'; it has train"):
        load_split(*_written(tmp_path), "march")


def _written(tmp_path):
    directory = tmp_path / "ok"
    write_dataset(directory, {"train": [_article(1, "2024-05-02", 1)]}, {})
    return (directory,)


def test_one_labelled_sample_rule_keeps_the_signal_rate_and_the_seed():
    """Evaluation and calibration drew their samples with two copies of this rule."""
    from pipeline.article import Article
    from pipeline.dataset import labelled_sample

    articles = [Article(id=i, title=f"t{i}", signal=None if i % 5 == 0 else int(i % 4 == 0))
                for i in range(400)]
    labelled = [a for a in articles if a.signal is not None]
    assert labelled_sample(articles) == labelled  # no limit: every labelled one, in order
    assert labelled_sample(articles, 10_000) == labelled
    drawn = labelled_sample(articles, 100, seed=3)
    assert len(drawn) == 100 and drawn == labelled_sample(articles, 100, seed=3)
    assert drawn != labelled[:100] and drawn != labelled_sample(articles, 100, seed=4)
    rate = sum(a.signal for a in labelled) / len(labelled)
    assert abs(sum(a.signal for a in drawn) / 100 - rate) < 0.15
