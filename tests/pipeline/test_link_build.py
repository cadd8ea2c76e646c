"""The link stage inside the dataset build: a link list in the original work's shape
(URLs, dates, labels) built into a dataset whose articles are the pages' text, with
provenance in the manifest and the share of text from pages in ``signals data stats``."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.build import build_dataset
from pipeline.build_config import PipelineConfig
from pipeline.stats import dataset_stats, stats_markdown
from tests.pipeline.link_site import BODY, serve_link_site, story_lead


def test_link_list_build_uses_page_text_dedupes_by_article_and_reports_it(tmp_path, capsys):
    with serve_link_site() as site:
        links = tmp_path / "links.csv"
        links.write_text(
            "url,date,label,title\n"
            f"{site.url('/story/1')}?utm_source=x,2024-01-10,1,\n"
            f"{site.url('/news/acme-deal')},2024-01-11,1,\n"
            f"{site.url('/amp/acme-deal')},2024-01-12,1,\n"  # same article (rel=canonical)
            # nothing to extract, robots.txt disallows: kept with their own (title) text
            f"{site.url('/cookie-wall')},2024-02-02,0,Cookie wall\n"
            f"{site.url('/private/x')},2024-02-03,0,Private page\n"
            f"{site.url('/missing')},2024-02-04,0,\n",  # 404 and no title: nothing left
            encoding="utf-8")
        config = PipelineConfig.model_validate({
            "name": "linked", "sources": [{"kind": "links", "name": "links",
                                           "paths": [str(links)]}],
            "links": {"cache_path": str(tmp_path / "cache.sqlite"), "per_host_interval_s": 0,
                      "deadline_s": 60, "allow_networks": ["127.0.0.0/8"]},
            "split": {"train_end": "2024-01-31"}, "datasets_dir": str(tmp_path / "datasets"),
            "work_dir": str(tmp_path / "work")})
        manifest = build_dataset(config)
        requests = dict(site.requests)

    links_section = manifest.links
    assert links_section["counts"]["input"] == 6 and links_section["counts"]["kept"] == 5
    assert links_section["counts"]["same_article"] == 1
    assert links_section["counts"]["fetch_status"] == {
        "ok": 3, "extraction_failed": 1, "robots_disallowed": 1, "http_error": 1}
    assert manifest.counts["empty_skipped"] == 1 and manifest.counts["written"] == 4
    assert requests.get("/private/x") is None and requests["/robots.txt"] == 1
    directory = tmp_path / "datasets" / "linked"
    train = [json.loads(line) for line in (directory / "train.jsonl").read_text().splitlines()]
    texts = {row["link"]: row["text"] for row in train}
    story = texts[site.url("/story/1?utm_source=x")]  # the item keeps its link as given
    assert story_lead(1) in story and BODY[2] in story
    assert len(train) == 2  # story 1 and one of the two acme URLs
    provenance = links_section["provenance"]
    assert {p["fetch_status"] for p in provenance.values()} == {
        "ok", "extraction_failed", "robots_disallowed"}

    stats = dataset_stats(directory)
    train_links = stats["splits"]["train"]["links"]
    assert train_links["from_page"] == 2 and train_links["from_page_rate"] == 1.0
    assert train_links["page_char_share"] == 1.0
    february = stats["splits"]["2024-02"]["links"]
    assert february["from_page"] == 0 and february["page_chars"] == 0
    assert february["fetch_status"] == {"extraction_failed": 1, "robots_disallowed": 1}
    assert "## Text from linked pages" in stats_markdown(stats)

    # `signals data stats` prints the same report
    from signals.cli import build_parser

    args = build_parser().parse_args(["data", "stats", str(directory),
                                      "--out", str(tmp_path / "report")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "## Text from linked pages" in printed
    assert "| train | 2 | 2 | 1.000 |" in printed, printed


def test_link_stage_settings_are_checked_when_the_config_loads():
    base = {"name": "x", "sources": [{"kind": "links", "name": "l", "paths": ["a.csv"]}],
            "split": {"train_end": "2024-01-31"}}
    with pytest.raises(ValidationError, match="max_redirects"):
        PipelineConfig.model_validate({**base, "links": {"max_redirects": -1}})
    with pytest.raises(ValidationError, match="fetch_every"):
        PipelineConfig.model_validate({**base, "links": {"fetch_every": True}})
