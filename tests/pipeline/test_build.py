"""The dataset build end to end: real feeds over loopback HTTP, real e-mail and record
files, duplicates across sources, broken inputs, the dataset directory and its views."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.article import Article
from pipeline.build import build_dataset
from pipeline.build_config import PipelineConfig, load_pipeline_config
from pipeline.collect import read_reuters
from pipeline.stage import StageOutput
from pipeline.stage_runner import run_cached_stage
from pipeline.views import reward_rows
from pipeline.dataset import load_split, read_manifest
from pipeline.prompt import encode_prompt
from tests.conftest import serve_routes
# The IMAP reader's fixtures (a real pymap server on loopback), shared rather than copied.
from tests.pipeline.test_imap import PASSWORD as IMAP_PASSWORD
from tests.pipeline.test_imap import imap_server, newsletters_mailbox  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = Path(__file__).resolve().parents[2] / "pipeline" / "configs"

LOCAL_FEED = {"allow_networks": ["127.0.0.0/8"]}  # the feed server is on loopback


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncated_rss20() -> bytes:
    data = (FIXTURES / "rss20.xml").read_bytes()
    return data[:data.index(b"in an all-cash deal")]  # cut inside the third item


@pytest.fixture(scope="module")
def feed_server() -> Iterator[str]:
    routes = {
        "/wire": (200, "application/rss+xml", (FIXTURES / "build_wire.xml").read_bytes()),
        "/ledger": (200, "application/rss+xml", (FIXTURES / "rss20.xml").read_bytes()),
        "/truncated": (200, "application/rss+xml", truncated_rss20()),
        "/error": (500, "text/plain", b"feed generator crashed"),
    }

    with serve_routes(routes) as url:
        yield url


def config_for(feed_server: str, tmp_path: Path, **overrides) -> PipelineConfig:
    """Every kind of source, including a truncated feed, a failing feed and a missing file."""
    data = {
        "name": "newsletters",
        "datasets_dir": str(tmp_path / "datasets"),
        "work_dir": str(tmp_path / "work"),
        "sources": [
            {"kind": "rss", "name": "tidemark", "url": f"{feed_server}/wire", **LOCAL_FEED},
            {"kind": "rss", "name": "ledger", "url": f"{feed_server}/ledger", **LOCAL_FEED},
            {"kind": "rss", "name": "ledger-mirror", "url": f"{feed_server}/truncated", **LOCAL_FEED},
            {"kind": "rss", "name": "broken", "url": f"{feed_server}/error", **LOCAL_FEED, "timeout_s": 5},
            {"kind": "jsonl", "name": "archive",
             "paths": [str(FIXTURES / "build_archive.jsonl"), str(FIXTURES / "records.jsonl")]},
            {"kind": "csv", "name": "sheet", "paths": str(FIXTURES / "records.csv")},
            {"kind": "mbox", "name": "inbox", "paths": str(FIXTURES / "*.mbox")},
            {"kind": "eml", "name": "desk",
             "paths": [str(FIXTURES / "unknown_charset.eml"), str(tmp_path / "missing.eml")]},
        ],
        "split": {"train_end": "2024-05-31"},
    }
    data.update(overrides)
    return PipelineConfig.model_validate(data)


# Every item the sources hold that must reach the dataset, exactly once: all dated,
# non-empty items less the copies (see the expectations in the test).
EXPECTED_TRAIN = {"tidemark-2024-05-2281", "arc-9003", 5101, 5102, 5104, "6201", "6202"}
EXPECTED_JUNE = {
    "arc-9002", "arc-9004", "tidemark-2024-06-0342",
    "https://ledger.example.com/2024/06/norvik-series-b", "ledger-2024-06-0412",
    "https://ledger.example.com/2024/06/castellan-orchard",
    "note-20240610@deltadesk.example#1",
    "fw-2024-24@fenwick.example#1", "al-5521@alpine-ledger.example#1",
}


def test_build_counts_dedupes_keeps_earliest_and_skips_broken_inputs(
        feed_server, tmp_path, caplog):
    config = config_for(feed_server, tmp_path)
    with caplog.at_level(logging.WARNING):
        manifest = build_dataset(config)
    directory = tmp_path / "datasets" / "newsletters"
    assert read_manifest(directory) == manifest

    sources = manifest.sources
    assert {n: (s["articles"], s["skipped"], len(s["failed_inputs"]))
            for n, s in sources.items()} == {
        "tidemark": (3, 0, 0), "ledger": (3, 0, 0),
        "ledger-mirror": (2, 1, 0),  # the half-read third item is skipped, two kept
        "broken": (0, 0, 1), "archive": (10, 1, 0), "sheet": (3, 1, 0),
        "inbox": (4, 0, 0), "desk": (1, 0, 1)}
    assert sources["broken"]["failed_inputs"][0]["reason"].startswith("HTTP 500")
    assert sources["desk"]["failed_inputs"] == [
        {"input": str(tmp_path / "missing.eml"), "reason": "no such file"}]
    # The failures were logged, not just counted.
    assert "HTTP 500" in caplog.text and "missing.eml" in caplog.text

    counts = manifest.counts
    assert counts["read"] == 26 and counts["skipped_items"] == 3
    assert counts["failed_inputs"] == 2
    assert counts["empty_skipped"] == 1  # arc-9006 has a blank title and text
    # Exact: the Helix story re-filed by the archive a day later, and the two complete
    # items of the truncated mirror of the ledger feed. Near: the Sable story (the
    # archive's copy is earlier and has a different weekday and a footer).
    assert counts["dedupe"] == {"input": 25, "kept": 21, "exact": 3, "near": 1,
                                "labels_carried": 1, "label_conflicts": 0}
    assert counts["undated_skipped"] == 5
    assert counts["written"] == 16

    kinds = {(d["id"], d["kind"], d["duplicate_of"]) for d in manifest.dedupe["duplicates"]}
    assert ("arc-9001", "exact", "tidemark-2024-05-2281") in kinds  # the feed's copy is earlier
    assert ("tidemark-2024-06-0117", "near", "arc-9002") in kinds  # the archive's is earlier

    train = load_split(directory, "train")
    june = load_split(directory, "2024-06")
    assert list(manifest.splits) == ["train", "2024-06"]
    assert [a.id for a in train] and {a.id for a in train} == EXPECTED_TRAIN
    assert {a.id for a in june} == EXPECTED_JUNE
    assert len(train) + len(june) == counts["written"]  # no id twice
    assert all(a.date_published.date() <= date(2024, 5, 31) for a in train)
    assert all(a.date_published.strftime("%Y-%m") == "2024-06" for a in june)
    # Dates are UTC-aware after normalisation, and each split is in date order.
    assert all(a.date_published.utcoffset().total_seconds() == 0 for a in train + june)
    assert [a.date_published for a in june] == sorted(a.date_published for a in june)
    # The kept (earlier, unlabelled) feed copy of the Helix story took the label of the
    # archive's dropped copy.
    helix = next(a for a in train if a.id == "tidemark-2024-05-2281")
    assert (helix.source, helix.signal) == ("tidemark", 1)
    sable = next(a for a in june if a.id == "arc-9002")
    assert sable.source == "archive" and sable.signal == 0

    # Provenance: every input file and feed body, by sha256.
    files = manifest.source_files
    for name in ("build_archive.jsonl", "records.jsonl", "records.csv", "digest.mbox",
                 "unknown_charset.eml"):
        assert files[str(FIXTURES / name)] == sha256(FIXTURES / name)
    assert files[f"{feed_server}/wire"] == sha256(FIXTURES / "build_wire.xml")
    assert files[f"{feed_server}/truncated"] == hashlib.sha256(truncated_rss20()).hexdigest()
    for name, split in manifest.splits.items():
        assert split.sha256 == sha256(directory / split.file)
    assert manifest.date_from == "2024-05-02" and manifest.date_to == "2024-06-15"
    assert str(manifest.train_end) == "2024-05-31"
    assert all(not stage["ran"] for stage in manifest.stages.values())
    assert "the records' own `signal` field" in manifest.label_rule
    assert manifest.config["dedupe"]["threshold"] == 0.8
    assert not (tmp_path / "datasets" / ".newsletters.build").exists()


def test_second_build_does_no_work_and_a_changed_input_rebuilds(feed_server, tmp_path):
    records = tmp_path / "archive.jsonl"
    shutil.copy(FIXTURES / "build_archive.jsonl", records)
    config = config_for(feed_server, tmp_path, sources=[
        {"kind": "rss", "name": "tidemark", "url": f"{feed_server}/wire", **LOCAL_FEED},
        {"kind": "jsonl", "name": "archive", "paths": str(records)}])
    first = build_dataset(config)
    train_file = tmp_path / "datasets" / "newsletters" / "train.jsonl"
    inode, mtime = train_file.stat().st_ino, train_file.stat().st_mtime_ns

    again = build_dataset(config)
    assert again == first  # same created_at, same key: the old manifest came back
    assert (train_file.stat().st_ino, train_file.stat().st_mtime_ns) == (inode, mtime)

    with open(records, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "arc-9100", "title": "Late addition",
                                 "date_published": "2024-05-30T10:00:00",
                                 "text": "Fenner Steel agreed to sell its rail unit.",
                                 "signal": 1}) + "\n")
    changed = build_dataset(config)
    assert changed.build_key != first.build_key
    assert changed.counts["written"] == first.counts["written"] + 1
    assert "arc-9100" in {a.id for a in load_split(train_file.parent, "train")}
    assert build_dataset(config, force=True).created_at >= changed.created_at


def test_views_hold_labelled_rows_with_the_true_label_chosen(feed_server, tmp_path, tokenizer):
    config = config_for(feed_server, tmp_path, views={"enabled": True, "max_prompt_tokens": 192})
    manifest = build_dataset(config, tokenizer=tokenizer)
    directory = tmp_path / "datasets" / "newsletters"
    for split in manifest.splits:
        articles = {str(a.id): a for a in load_split(directory, split) if a.signal is not None}
        rows = {}
        for view in ("sft", "dpo", "reward"):
            entry = manifest.views["splits"][split][view]
            path = directory / entry["file"]
            assert entry["sha256"] == sha256(path)
            rows[view] = [json.loads(line) for line in path.read_text().splitlines()]
            assert entry["rows"] == len(rows[view]) == len(articles)
        for sft, dpo, reward in zip(rows["sft"], rows["dpo"], rows["reward"], strict=True):
            article = articles[sft["id"]]
            prompt = encode_prompt(article, tokenizer, 192).text
            truth, other = str(article.signal), str(1 - article.signal)
            assert (sft["prompt"], sft["completion"], sft["label"]) == (
                prompt, truth, article.signal)
            assert (dpo["id"], dpo["prompt"], dpo["chosen"], dpo["rejected"]) == (
                sft["id"], prompt, truth, other)
            assert (reward["chosen"], reward["rejected"]) == (prompt + truth, prompt + other)
            assert "prompt" not in reward  # TRL's implicit-prompt preference format
    assert manifest.views["splits"]["train"]["sft"]["rows"] == 7
    assert manifest.views["splits"]["2024-06"]["sft"]["rows"] == 2


def test_undated_articles_can_go_to_their_own_split(feed_server, tmp_path):
    config = config_for(feed_server, tmp_path, split={"train_end": "2024-05-31",
                                                       "undated": "split"})
    manifest = build_dataset(config)
    undated = load_split(tmp_path / "datasets" / "newsletters", "undated")
    assert {a.id for a in undated} == {"mkt-5105", "6204", "arc-9005",
                                       "seedline-77@seedline.example#1",
                                       "seedline-77@seedline.example#2"}
    assert manifest.counts["undated_skipped"] == 0 and manifest.counts["written"] == 21


def test_strict_build_fails_on_a_missing_file(feed_server, tmp_path):
    config = config_for(feed_server, tmp_path, strict=True, sources=[
        {"kind": "rss", "name": "tidemark", "url": f"{feed_server}/wire", **LOCAL_FEED},
        {"kind": "eml", "name": "desk", "paths": [str(tmp_path / "missing.eml")]}])
    with pytest.raises(RuntimeError, match="missing.eml: no such file"):
        build_dataset(config)
    assert not (tmp_path / "datasets" / "newsletters").exists()


def test_id_clash_between_different_articles_renames_the_later_one(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"id": 7, "title": "Alder Bank raises capital",
                                 "date_published": "2024-05-01", "text": "Alder Bank sold "
                                 "new shares worth 5% of its capital.", "signal": 0}) + "\n")
    second.write_text(json.dumps({"id": 7, "title": "Birch Mining finds copper",
                                  "date_published": "2024-05-02", "text": "Birch Mining "
                                  "reported a copper find in Chile.", "signal": 1}) + "\n")
    config = PipelineConfig.model_validate({
        "name": "clash", "datasets_dir": str(tmp_path / "ds"), "work_dir": str(tmp_path / "w"),
        "sources": [{"kind": "jsonl", "name": "a", "paths": str(first)},
                    {"kind": "jsonl", "name": "b", "paths": str(second)}],
        "split": {"train_end": "2024-12-31"}})
    manifest = build_dataset(config)
    assert manifest.counts["ids_renamed"] == 1
    assert [a.id for a in load_split(tmp_path / "ds" / "clash", "train")] == [7, "b/7"]


def test_reuters_source_reads_every_document_of_real_sgml(reuters_dir, tmp_path):
    # The first few <REUTERS> elements of the real first file: indexed and unindexed.
    text = (reuters_dir / "reut2-000.sgm").read_text(encoding="latin-1")
    cut = text.index("</REUTERS>", text.index('NEWID="12"')) + len("</REUTERS>")
    (tmp_path / "reut2-000.sgm").write_text(text[:cut] + "\n</lewis>\n", encoding="latin-1")
    everything = read_reuters(tmp_path, indexed_only=False)
    indexed = read_reuters(tmp_path)
    assert len(everything.articles) == 12
    assert len(indexed.articles) + indexed.skipped == 12 and indexed.skipped > 0
    unindexed = [a for a in everything.articles if a.id not in {b.id for b in indexed.articles}]
    assert unindexed and all(a.signal is None for a in unindexed)
    assert all(a.signal in (0, 1) for a in indexed.articles)

    config = PipelineConfig.model_validate({
        "name": "reuters-mini", "datasets_dir": str(tmp_path / "ds"),
        "sources": [{"kind": "reuters", "directory": str(tmp_path), "indexed_only": False}],
        "split": {"train_end": "1987-02-26"}})
    manifest = build_dataset(config)
    assert manifest.counts["read"] == 12
    assert manifest.source_files == {str(tmp_path / "reut2-000.sgm"):
                                        sha256(tmp_path / "reut2-000.sgm")}
    assert "indexed under 'acq'" in manifest.label_rule


def test_stage_output_is_cached_by_input_and_settings(tmp_path):
    calls = []

    def tag_topics(articles: list[Article], settings: dict) -> StageOutput:
        calls.append(len(articles))
        return StageOutput([a.model_copy(update={"topics": [settings["topic"]]})
                            for a in articles], {"tagged": len(articles)})

    articles = [Article(id=i, title=f"Item {i}", text="Some text.") for i in range(3)]
    first, hit = run_cached_stage("topics", tag_topics, articles, {"topic": "ev"}, tmp_path)
    assert not hit and calls == [3] and first.counts == {"tagged": 3}
    second, hit = run_cached_stage("topics", tag_topics, articles, {"topic": "ev"}, tmp_path)
    assert hit and calls == [3]
    assert [a.to_record() for a in second.articles] == [a.to_record() for a in first.articles]
    # Other settings or other input: computed again.
    run_cached_stage("topics", tag_topics, articles, {"topic": "ai"}, tmp_path)
    run_cached_stage("topics", tag_topics, articles[:2], {"topic": "ev"}, tmp_path)
    assert calls == [3, 3, 2]


def test_reward_rows_join_prompt_and_answers():
    rows = reward_rows([{"id": "1", "prompt": "P:", "chosen": "1", "rejected": "0", "label": 1}])
    assert rows == [{"id": "1", "label": 1, "chosen": "P:1", "rejected": "P:0"}]


def test_example_configs_load_and_bad_fields_are_named(tmp_path):
    examples = sorted(CONFIGS.glob("*.yaml"))
    assert examples
    from pipeline.imap import ImapConfig
    from pipeline.labels import LabelConfig
    from pipeline.relevance import RelevanceConfig
    from pipeline.teacher import TeacherConfig
    from pipeline.topics import TopicConfig
    from pipeline.trends import TrendConfig

    stage_configs = {"relevance": RelevanceConfig, "topics": TopicConfig, "trends": TrendConfig,
                     "teacher": TeacherConfig, "labels": LabelConfig}
    adapter_keys = {"references", "keep_existing"}  # read by pipeline.stage_runner's adapters
    for path in examples:
        config = load_pipeline_config(path)
        assert config.sources and config.split.train_end
        for name, stage_config in stage_configs.items():
            settings = getattr(config, name)
            if settings is not None:  # the stage's own config accepts the example
                stage_config.model_validate(
                    {k: v for k, v in settings.items() if k not in adapter_keys})
        for source in config.sources:
            if source.kind == "imap":
                ImapConfig.model_validate({**source.imap, "source": source.name})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsources: [{kind: rss, name: a}]\nsplit: {train_end: 2024-01-01}\n")
    with pytest.raises(ValidationError, match="url"):
        load_pipeline_config(bad)
    bad.write_text("name: x\nsources: [{kind: rss, name: a, url: u}]\n"
                   "split: {train_end: 2024-01-01}\ndedupe: {threshold: 1.5}\n")
    with pytest.raises(ValidationError, match="threshold"):
        load_pipeline_config(bad)
    with pytest.raises(ValidationError, match="kind"):
        PipelineConfig.model_validate({"name": "x", "split": {"train_end": "2024-01-01"},
                                       "sources": [{"kind": "gopher", "name": "a"}]})
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_pipeline_config(bad)
    bad.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load_pipeline_config(bad)


def test_label_stage_combines_teacher_and_trend_votes_and_is_cached(tmp_path):
    from pipeline.labels import LabelConfig
    from pipeline.stats import dataset_stats

    labels = {"sources": ["teacher", "trend"], "combine": {"rule": "any"}}
    data = {
        "name": "labelled", "datasets_dir": str(tmp_path / "ds"), "work_dir": str(tmp_path / "w"),
        "sources": [{"kind": "jsonl", "name": "seed",
                     "paths": [str(FIXTURES / "build_labelled.jsonl"),
                               str(FIXTURES / "records.jsonl")]}],
        "labels": labels, "split": {"train_end": "2024-05-31"}}
    manifest = build_dataset(PipelineConfig.model_validate(data))
    stage = manifest.stages["labels"]
    assert stage["ran"] and not stage["cached"] and stage["settings"] == labels
    assert stage["counts"]["votes"]["teacher"] == {"1": 3, "0": 3, "abstain": 2}
    assert manifest.label_rule == LabelConfig.model_validate(labels).describe()
    assert {n: s["ran"] for n, s in manifest.stages.items()} == {
        "relevance": False, "topics": False, "trends": False, "teacher": False, "labels": True}

    directory = tmp_path / "ds" / "labelled"
    signals = {a.id: a.signal for name in manifest.splits for a in load_split(directory, name)}
    # lab-1: teacher 0 but sustained trend growth -> 1 (any); lab-3: both 0; lab-4: nobody
    # voted, the record's own label stays; 5101: teacher 1, trend 0 -> 1.
    assert signals == {"lab-1": 1, "lab-2": 1, "lab-3": 0, "lab-4": 1,
                       5101: 1, 5102: 0, 5104: 1}
    lab1 = next(a for a in load_split(directory, "train") if a.id == "lab-1")
    assert {v["source"]: v["label"] for v in lab1.labels} == {"teacher": 0, "trend": 1}
    assert lab1.label_decision["decided_by"] == ["trend"]

    agreement = dataset_stats(directory)["splits"]["train"]["label_agreement"]
    assert agreement["sources"]["teacher"]["agreement_with_final"] == 0.8
    assert agreement["pairs"]["teacher vs trend"]["both_voted"] == 3
    assert agreement["pairs"]["teacher vs trend"]["agreement"] == 0.3333

    # A new cut-off rebuilds the dataset but the label stage's output comes from its cache.
    data["split"] = {"train_end": "2024-05-06"}
    rebuilt = build_dataset(PipelineConfig.model_validate(data))
    assert rebuilt.stages["labels"]["cached"] is True
    assert rebuilt.build_key != manifest.build_key
    assert rebuilt.splits["train"].count == 4


def test_stage_runner_of_a_missing_module_is_none_with_a_log_line(caplog):
    from pipeline.stage import STAGES
    from pipeline.stage_runner import _stage_runner

    assert _stage_runner("no_such_stage") is None
    assert "cannot be imported" in caplog.text
    assert STAGES.index("teacher") < STAGES.index("labels")  # votes exist before combining


def test_imap_mailbox_source_is_read_hashed_and_a_dead_server_counted(
        tmp_path, imap_server, newsletters_mailbox, monkeypatch):  # noqa: F811
    from tests.conftest import free_port

    monkeypatch.setenv("TEST_IMAP_PASSWORD", IMAP_PASSWORD)
    mailbox = newsletters_mailbox
    server = imap_server
    imap = {"host": "127.0.0.1", "port": server.port, "security": "starttls",
            "ca_file": str(server.ca_file), "username": "reader",
            "password_env": "TEST_IMAP_PASSWORD", "mailbox": mailbox, "criteria": "ALL"}
    config = PipelineConfig.model_validate({
        "name": "mail", "datasets_dir": str(tmp_path / "ds"),
        "sources": [{"kind": "imap", "name": "harbor", "imap": imap},
                    {"kind": "imap", "name": "dead", "imap": {
                        **imap, "port": free_port(), "timeout_s": 2}}],
        "split": {"train_end": "2030-01-01", "undated": "split"}})
    manifest = build_dataset(config)
    harbor, dead = manifest.sources["harbor"], manifest.sources["dead"]
    assert harbor["articles"] == 5 and len(harbor["inputs"]) == 1
    assert len(harbor["inputs"][0]["sha256"]) == 64
    assert dead["articles"] == 0 and "cannot connect" in dead["failed_inputs"][0]["reason"]
    articles = [a for name in manifest.splits
                for a in load_split(tmp_path / "ds" / "mail", name)]
    assert len(articles) == manifest.counts["written"] == 5
    assert {a.source for a in articles} == {"harbor"}
    # Read-only (mark_seen off): the same messages next time, so nothing is rebuilt.
    assert build_dataset(config).created_at == manifest.created_at


# --------------------------------------------------------------------------- stage wiring


def wire_config(tmp_path: Path, **stages) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "staged", "datasets_dir": str(tmp_path / "ds"), "work_dir": str(tmp_path / "w"),
        "sources": [{"kind": "jsonl", "name": "seed", "paths": [
            str(FIXTURES / "build_archive.jsonl"), str(FIXTURES / "records.jsonl")]}],
        "split": {"train_end": "2024-05-31", "undated": "split"}, **stages})


def staged_articles(tmp_path: Path, manifest: dict) -> dict:
    return {a.id: a for name in manifest.splits
            for a in load_split(tmp_path / "ds" / "staged", name)}


def test_relevance_and_topics_stages_run_on_the_real_embedding_model(tmp_path):
    references = tmp_path / "references.jsonl"
    references.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "r1", "title": "Carmaker agrees to buy battery maker in cash and shares deal",
         "text": "The carmaker agreed to acquire the battery maker for $3bn in cash and "
                 "shares, a premium of 35% to its share price."},
        {"id": "r2", "title": "Drugmaker to acquire biotech rival for $5bn",
         "text": "Shareholders of the biotech company will receive $40 a share in cash."}]))
    # MiniLM scores the Helix take-over about 0.4 against these references and every
    # other fixture item (a CFO, a lease, a trial, a power deal...) under 0.15.
    config = wire_config(tmp_path, relevance={
        "references": str(references), "threshold": 0.25, "top_k": 2, "show_progress": False},
        topics={"max_topics": 4})
    manifest = build_dataset(config)
    relevance, topics = manifest.stages["relevance"], manifest.stages["topics"]
    assert relevance["ran"] and topics["ran"] and not relevance["cached"]
    assert relevance["counts"] == {"kept": 1, "rejected": 8, "skipped": 0}
    assert relevance["articles_in"] == 9 and topics["articles_in"] == 1
    (helix,) = staged_articles(tmp_path, manifest).values()
    assert helix.id == "arc-9001" and 0.25 <= helix.relevance < 1
    assert 1 <= len(helix.topics) <= 4 and topics["counts"]["with_topics"] == 1

    # Without the filter: records that carry topics keep them, the others get keyphrases.
    manifest = build_dataset(wire_config(tmp_path, topics={"max_topics": 4}))
    articles = staged_articles(tmp_path, manifest)
    assert articles[5101].topics == ["power purchase agreement", "data centers"]
    assert articles["arc-9004"].topics and len(articles["arc-9004"].topics) <= 4
    assert manifest.stages["topics"]["counts"]["kept_existing"] == 3  # 5101, 5102, 5104
    assert manifest.stages["topics"]["counts"]["articles"] == 6


def test_teacher_stage_votes_over_a_real_openai_compatible_endpoint(tmp_path):
    from fastapi import FastAPI

    from tests.conftest import serve_app

    app = FastAPI()
    asked = []

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        # A deterministic stand-in for the teacher LLM: acquisitions are signals.
        question = body["messages"][-1]["content"]
        asked.append(question)
        answer = "1" if "acquire" in question.lower() else "0"
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    with serve_app(app) as url:
        config = wire_config(tmp_path, teacher={
            "base_url": f"{url}/v1", "model": "teacher-test", "api_key_env": None,
            "cache_path": str(tmp_path / "teacher.sqlite")},
            labels={"sources": ["teacher"], "combine": {"rule": "any"}})
        manifest = build_dataset(config)
    teacher = manifest.stages["teacher"]
    assert teacher["ran"] and teacher["counts"]["answered"] == teacher["articles_in"] == len(asked)
    articles = staged_articles(tmp_path, manifest)
    helix = articles["arc-9001"]
    assert [v["label"] for v in helix.labels if v["source"] == "teacher"] == [1]
    assert helix.signal == 1
    # Corbel's CFO appointment: the records said 0, and so did the teacher.
    assert articles[5102].signal == 0
    assert "teacher" in manifest.stages["labels"]["counts"]["votes"]


def test_trends_then_labels_stages_over_recorded_google_answers(tmp_path):
    # The trends module's replay server: real HTTP answering pytrends from recordings.
    from tests.pipeline.test_trends import EV, NO_DATA, SSB, RecordedTrends

    records = tmp_path / "ideas.jsonl"
    records.write_text("".join(json.dumps({
        "id": number, "title": title, "text": f"{title}, the company said on Tuesday.",
        "date_published": "2023-03-14T09:30:00", "topics": topics}) + "\n"
        for number, title, topics in [
            (1, "Start-up unveils solid-state battery", [SSB, EV]),
            (2, "Carmaker cuts electric vehicle prices", [EV]),
            (3, "Utility tenders grid storage", [NO_DATA])]))
    with RecordedTrends() as google:
        config = PipelineConfig.model_validate({
            "name": "trended", "datasets_dir": str(tmp_path / "ds"),
            "work_dir": str(tmp_path / "w"),
            "sources": [{"kind": "jsonl", "name": "ideas", "paths": str(records)}],
            "trends": {"base_url": google.base_url, "min_interval_s": 0,
                       "cache_path": str(tmp_path / "trends.sqlite")},
            "labels": {"sources": ["trend"], "combine": {"when_undecided": "unknown"}},
            "split": {"train_end": "2023-12-31"}})
        manifest = build_dataset(config)
    assert manifest.stages["trends"]["ran"]
    assert manifest.stages["trends"]["counts"]["topics_measured"] == 2
    articles = {a.id: a for a in load_split(tmp_path / "ds" / "trended", "train")}
    assert articles[1].growth[SSB].ten_years is not None
    # Sustained growth of solid-state batteries: signal; a recent EV surge only: not;
    # no trend data: no label.
    assert {i: a.signal for i, a in articles.items()} == {1: 1, 2: 0, 3: None}
    assert manifest.splits["train"].labelled == 2


def test_stage_settings_are_validated_when_the_config_loads(tmp_path):
    base = "name: x\nsources: [{kind: rss, name: a, url: u}]\nsplit: {train_end: 2024-01-01}\n"
    path = tmp_path / "c.yaml"
    for section, needle in [
            ("labels: {combine: {rule: sometimes}}\n", "labels: combine.rule"),
            ("trends: {max_retries: -1}\n", "trends: max_retries"),
            ("teacher: {max_tokens: 0}\n", "teacher: max_tokens"),
            ("topics: {keep_existing: true, timeout_s: 0}\n", "topics: timeout_s"),
            ("relevance: {threshold: 0.5}\n", "relevance: the stage needs `references`"),
            ("sources: [{kind: imap, name: m, imap: {host: h, security: carrier-pigeon}}]\n",
             "security")]:
        text = base.replace("sources: [{kind: rss, name: a, url: u}]\n", "") \
            if section.startswith("sources") else base
        path.write_text(text + section)
        with pytest.raises(ValueError, match=re.escape(needle)):
            load_pipeline_config(path)
    path.write_text(base + "labels: {sources: [annotation]}\ntopics: {keep_existing: false}\n")
    assert load_pipeline_config(path).labels == {"sources": ["annotation"]}
