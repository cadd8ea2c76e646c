"""``signals data build|stats|show|import`` through a real argparse parser, on real files
and a real loopback feed server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.data_cli import detect_kind
from signals.cli import build_parser
from tests.conftest import serve_routes
from pipeline.dataset import read_jsonl, read_manifest

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(argv: list[str]) -> int:
    """``signals …`` exactly as the console script parses it; exceptions propagate."""
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def feed_url() -> Iterator[str]:
    body = (FIXTURES / "build_wire.xml").read_bytes()

    with serve_routes({"/wire.xml": (200, "application/rss+xml", body)}) as url:
        yield url


def test_build_then_rebuild_then_stats_and_show(feed_url, tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cli-set",
        "work_dir": str(tmp_path / "work"),
        "sources": [
            {"kind": "rss", "name": "tidemark", "url": f"{feed_url}/wire.xml",
             "allow_networks": ["127.0.0.0/8"]},  # the test's feed is on loopback
            {"kind": "jsonl", "name": "archive", "paths": [str(FIXTURES / "build_archive.jsonl")]},
        ],
        "split": {"train_end": "2024-05-31"},
    }))
    datasets = tmp_path / "datasets"
    assert run_cli(["data", "build", "--config", str(config),
                    "--datasets-dir", str(datasets)]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(datasets / "cli-set")
    assert f"dataset {datasets / 'cli-set'} (version {manifest.version})" in out
    assert "source tidemark (rss): 3 articles, 0 skipped, 0 inputs failed" in out
    assert "dropped 1 exact + 1 near duplicates, 1 empty, 1 undated; written 5" in out
    assert "stages run: none" in out
    assert manifest.counts["written"] == 5

    created = manifest.created_at
    assert run_cli(["data", "build", "--config", str(config),
                    "--datasets-dir", str(datasets)]) == 0
    assert read_manifest(datasets / "cli-set").created_at == created  # nothing rebuilt
    capsys.readouterr()

    report = tmp_path / "report"
    assert run_cli(["data", "stats", str(datasets / "cli-set"), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    stats = json.loads((report / "stats.json").read_text())
    assert stats["total"]["count"] == 5
    assert f"| train | {stats['splits']['train']['count']} |" in out
    assert (report / "stats.png").read_bytes()[:4] == b"\x89PNG"

    assert run_cli(["data", "show", str(datasets / "cli-set")]) == 0
    out = capsys.readouterr().out
    assert "stages: relevance=skipped" in out and "train" in out and "2024-06" in out


def test_import_feed_url_and_files_with_counts(feed_url, tmp_path, capsys):
    out_file = tmp_path / "feed.jsonl"
    assert run_cli(["data", "import", f"{feed_url}/wire.xml", "--source", "tidemark",
                    "--allow-network", "127.0.0.0/8", "--out", str(out_file)]) == 0
    articles = read_jsonl(out_file)
    assert [a.id for a in articles] == ["tidemark-2024-05-2281", "tidemark-2024-06-0117",
                                        "tidemark-2024-06-0342"]
    assert all(a.source == "tidemark" for a in articles)
    assert "(rss): 3 articles written" in capsys.readouterr().out

    csv_out = tmp_path / "sheet.jsonl"
    assert run_cli(["data", "import", str(FIXTURES / "records.csv"), "--out", str(csv_out)]) == 0
    printed = capsys.readouterr().out
    assert "(csv): 3 articles written" in printed and "1 items skipped" in printed
    assert "records.csv:4: skipped" in printed  # the reason for the skip is shown
    assert [a.source for a in read_jsonl(csv_out)] == ["records"] * 3

    atom_out = tmp_path / "atom.jsonl"  # a feed saved to a file
    assert run_cli(["data", "import", str(FIXTURES / "atom.xml"), "--out", str(atom_out)]) == 0
    assert [a.source for a in read_jsonl(atom_out)] == ["atom", "atom"]

    mbox_out = tmp_path / "inbox.jsonl"
    assert run_cli(["data", "import", str(FIXTURES / "digest.mbox"), "--out",
                    str(mbox_out)]) == 0
    assert len(read_jsonl(mbox_out)) == 4


def test_import_json_array_skips_and_explains_what_the_api_would_refuse(tmp_path, capsys):
    array = tmp_path / "newsletters.json"  # the dataset as shipped: one JSON array
    array.write_text(json.dumps([
        {"id": 1, "title": "Chipmaker raises guidance", "text": "Orders doubled."},
        {"id": 2, "title": "", "text": "   "},
        {"id": 3, "title": "Only a headline"},
    ]))
    out_file = tmp_path / "out.jsonl"
    assert run_cli(["data", "import", str(array), "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert "(json): 2 articles written" in printed and "1 items skipped" in printed
    assert "article 2 is empty: it has neither title nor text" in printed
    assert [a.id for a in read_jsonl(out_file)] == [1, 3]


def test_import_errors_are_clear(feed_url, tmp_path):
    with pytest.raises(RuntimeError, match="HTTP 404"):
        run_cli(["data", "import", f"{feed_url}/gone.xml", "--allow-network", "127.0.0.1/32",
                 "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(RuntimeError, match="refused address 127.0.0.1: loopback.*allow_networks"):
        run_cli(["data", "import", f"{feed_url}/wire.xml", "--out", str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="no such file"):
        run_cli(["data", "import", str(tmp_path / "absent.eml"), "--out",
                 str(tmp_path / "x.jsonl")])
    with pytest.raises(ValueError, match="pass --kind"):
        run_cli(["data", "import", str(tmp_path / "notes.txt"), "--out",
                 str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()


def test_stats_of_a_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing manifest.json"):
        run_cli(["data", "stats", str(tmp_path / "nope")])


def test_detect_kind():
    assert detect_kind("https://x.example/feed") == "rss"
    assert detect_kind("a/b.EML") == "eml" and detect_kind("box.mbox") == "mbox"
    assert detect_kind("r.ndjson") == "jsonl" and detect_kind("r.csv") == "csv"
    assert detect_kind("dataset.JSON") == "json"


def test_build_with_views_flag_writes_the_views(feed_url, tmp_path, base_model_dir, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "with-views", "datasets_dir": str(tmp_path / "datasets"),
        "sources": [{"kind": "jsonl", "name": "seed", "paths": [str(FIXTURES / "records.jsonl")]}],
        "split": {"train_end": "2024-05-31"},
        "views": {"tokenizer": str(base_model_dir), "max_prompt_tokens": 128}}))
    assert run_cli(["data", "build", "--config", str(config), "--views"]) == 0
    manifest = read_manifest(tmp_path / "datasets" / "with-views")
    assert manifest.config["views"]["enabled"] is True
    rows = (tmp_path / "datasets" / "with-views" / "views" / "train.dpo.jsonl").read_text()
    assert [json.loads(line)["chosen"] for line in rows.splitlines()] == ["1", "0", "1"]
    capsys.readouterr()
    assert run_cli(["data", "show", str(tmp_path / "datasets" / "with-views")]) == 0
    assert "views/train.sft.jsonl" in capsys.readouterr().out
