"""The pipeline orchestrator: sources → a versioned dataset directory with training views.

``build_dataset(config)`` (settings: :class:`pipeline.build_config.PipelineConfig`) runs,
in order:

1. **collect** (:mod:`pipeline.collect`): read every configured source (feeds over
   HTTP, ``.eml``/mbox files or globs, JSONL/CSV record files, the Reuters-21578
   collection, an IMAP mailbox). Each raw input is hashed (sha256 of the file or of the
   feed's HTTP body) before it is parsed. A source that cannot be read at all (missing
   file, HTTP error, timeout) is skipped with a log line and counted; the others go on.
2. **normalise** (:mod:`pipeline.normalise`): dates to aware UTC datetimes, whitespace
   trimmed, an item with neither title nor text skipped (counted), an id clash between
   different items resolved by prefixing the later one's source (logged, counted).
2b. **links** (when ``links`` is set): items whose text is short or a teaser get their
   link followed and the article's main text extracted (:mod:`pipeline.links`); the
   same article reached through two links is kept once (canonical URL). Each item's
   provenance (teaser/page/both, fetch status, final URL, extractor) goes into the
   manifest's ``links`` section, which ``signals data stats`` reads.
3. **dedupe**: exact copies (content hash) and near copies (MinHash/LSH) dropped, the
   earliest copy kept (:mod:`pipeline.dedupe`); a kept copy without a label takes the
   label of a dropped one (:func:`pipeline.dedupe.carry_labels_from_duplicates`).
4. **optional stages** (relevance filter, topics, trends, teacher, labels;
   :mod:`pipeline.stage_runner`), each run
   only when its section of the config is set *and* its module is importable and has
   ``run_stage(articles, settings) -> StageOutput``; otherwise skipped with a log
   line. The manifest records which stages ran, with which settings and counts.
5. **split and write**: temporal splits (:func:`pipeline.dataset.temporal_splits`),
   written atomically with :func:`pipeline.dataset.write_dataset`, plus, when asked,
   the training views beside them (:func:`pipeline.views.write_views`):
   ``views/<split>.sft.jsonl`` (prompt/completion),
   ``views/<split>.dpo.jsonl`` (prompt/chosen/rejected) and
   ``views/<split>.reward.jsonl`` (chosen/rejected full texts: TRL 1.16
   ``RewardTrainer``'s implicit-prompt preference format).

Idempotent: the *build key* is the sha256 of the pipeline version, the config (less
where it is written), the hash of every raw input and the source of every configured
stage module. When the dataset directory already holds a manifest with the same key,
it is returned untouched and nothing after step 1 runs. Expensive stages are also
cached under ``work_dir`` keyed by the hash of their input articles, settings and
module source, so a rebuild after a change further down the line (say, a new
``train_end``) does not recompute relevance scores, topics or trends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import dataset as dataset_files
from pipeline.article import Article
from pipeline.build_config import (
    PIPELINE_VERSION,
    FeedSource,
    FileSource,
    ImapSource,
    LinkStageConfig,
    PipelineConfig,
    ReutersSource,
    SplitConfig,
)
from pipeline.collect import SourceReport, collect_sources
from pipeline.dedupe import carry_labels_from_duplicates, deduplicate
from pipeline.link_settings import LinkSettings
from pipeline.links import LinkCounters, drop_link_duplicates, enrich_articles
from pipeline.normalise import normalise_articles
from pipeline.stage import STAGES
from pipeline.stage_runner import run_stages, stage_code_hash
from pipeline.views import write_views

log = logging.getLogger(__name__)

UNDATED_SPLIT = "undated"


def build_key(config: PipelineConfig, reports: list[SourceReport]) -> str:
    """sha256 of what determines the dataset: pipeline version, config (less where it
    is written) and the hash of every raw input."""
    settings = config.model_dump(mode="json", exclude={"datasets_dir", "work_dir"})
    inputs = [[r.name, [i["sha256"] for i in r.inputs], r.failed_inputs] for r in reports]
    stage_code = {name: stage_code_hash(name) for name in STAGES
                  if getattr(config, name) is not None}
    return hashlib.sha256(json.dumps({"version": PIPELINE_VERSION, "config": settings,
                                      "inputs": inputs, "stage_code": stage_code},
                                     sort_keys=True).encode()).hexdigest()


def _date_range(articles: list[Article]) -> dict[str, str | None]:
    days = sorted(day.isoformat() for day in (a.published_day() for a in articles)
                  if day is not None)
    return {"date_from": days[0] if days else None, "date_to": days[-1] if days else None}


def _label_rule(config: PipelineConfig, stages: dict[str, Any]) -> str:
    if stages.get("labels", {}).get("ran"):
        return stages["labels"].get("description") or json.dumps(config.labels)
    parts = []
    for source in config.sources:
        if isinstance(source, ReutersSource):
            parts.append(f"{source.name}: " + (
                "signal = indexed under 'acq', other indexed articles = not signal"
                if source.annotate_acq else "unlabelled"))
    records = [s.name for s in config.sources if isinstance(s, FileSource)
               and s.kind in ("jsonl", "csv")]
    if records:
        parts.append(f"{', '.join(records)}: the records' own `signal` field")
    unlabelled = [s.name for s in config.sources if isinstance(s, (FeedSource, ImapSource))
                  or (isinstance(s, FileSource) and s.kind in ("eml", "mbox"))]
    if unlabelled:
        parts.append(f"{', '.join(unlabelled)}: unlabelled (feeds and e-mails carry no label)")
    return "labels as the sources gave them (no label stage); " + "; ".join(parts)


def split_articles(articles: list[Article], split: SplitConfig) -> tuple[dict, int]:
    """Temporal splits; undated articles skipped or put in their own split."""
    dated = [a for a in articles if a.date_published is not None]
    undated = [a for a in articles if a.date_published is None]
    splits = dataset_files.temporal_splits(dated, split.train_end)
    skipped = 0
    if undated and split.undated == "split":
        splits[UNDATED_SPLIT] = undated
    elif undated:
        skipped = len(undated)
        log.warning("%d articles without a date left out (split.undated = skip): %s",
                    skipped, ", ".join(repr(a.id) for a in undated[:5])
                    + (" …" if skipped > 5 else ""))
    for name, members in splits.items():
        # Date order within a split (undated: id order), so a rebuild is byte-identical.
        members.sort(key=lambda a: (a.date_published or datetime.min.replace(
            tzinfo=timezone.utc), str(a.id)))
    return splits, skipped


def _write_undated_split(directory: Path, articles: list[Article]) -> dataset_files.SplitInfo:
    """The ``undated`` split file and its manifest entry (write_dataset's statistics
    need dates, so this split is written here)."""
    path = directory / f"{UNDATED_SPLIT}.jsonl"
    dataset_files.write_jsonl(path, articles)
    labelled = [a for a in articles if a.signal is not None]
    signals = sum(a.signal for a in labelled)
    return dataset_files.SplitInfo(
        file=path.name, sha256=dataset_files.file_sha256(path), count=len(articles),
        labelled=len(labelled), signals=signals,
        signal_rate=round(signals / len(labelled), 4) if labelled else None,
        date_from=None, date_to=None)


def _replace_dir(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target``; an existing target is moved aside first, so the
    target is never half-written (only briefly absent)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def run_link_stage(articles: list[Article],
                   config: LinkStageConfig) -> tuple[list[Article], dict[str, Any]]:
    """Follow the links of short/teaser items; the articles (one per canonical URL) and
    the manifest's ``links`` section: counts and each item's provenance by id."""
    from tqdm import tqdm

    settings = LinkSettings(**config.model_dump(exclude={"deadline_s"}))
    counters = LinkCounters()
    log.info("links: %d articles (%s)", len(articles), settings.fetch_when)
    with tqdm(total=len(articles), desc="links", unit="item") as bar:
        results = enrich_articles(articles, settings, deadline_s=config.deadline_s,
                                  counters=counters, on_done=bar.update)
    kept = drop_link_duplicates(results)
    section = {
        "counts": {
            "input": len(results), "kept": len(kept),
            "same_article": len(results) - len(kept),
            "fetch_status": dict(Counter(r.provenance.fetch_status for r in results)),
            "text_origin": dict(Counter(r.provenance.text_origin for r in results)),
        },
        "requests": counters.snapshot()["requests"],
        "provenance": {str(r.article.id): r.provenance.model_dump(mode="json") for r in kept},
    }
    log.info("links: %s", section["counts"])
    return [r.article for r in kept], section


def _written_links(section: dict[str, Any] | None,
                   splits: dict[str, list[Article]]) -> dict[str, Any] | None:
    """The ``links`` section with provenance only for the articles written (dedupe and
    the stages may have dropped some)."""
    if section is None:
        return None
    written = {str(a.id) for split in splits.values() for a in split}
    return {**section, "provenance": {k: v for k, v in section["provenance"].items()
                                      if k in written}}


def build_dataset(config: PipelineConfig, force: bool = False,
                  tokenizer: Any = None) -> dataset_files.DatasetManifest:
    """Build the dataset ``config`` describes; return its manifest.

    When the dataset directory already holds a build of the same inputs with the same
    config, its manifest is returned and nothing is rewritten (``force`` rebuilds).
    ``tokenizer``: an already loaded tokenizer for the views (else loaded from
    ``config.views.tokenizer``).
    """
    started = time.perf_counter()
    out_dir = config.output_dir()
    reports = collect_sources(config)
    key = build_key(config, reports)
    if not force and (out_dir / "manifest.json").is_file():
        existing = dataset_files.read_manifest(out_dir)
        if existing.build_key == key:
            log.info("dataset %s is up to date (build key %s)", out_dir, key[:12])
            return existing

    articles = [a for report in reports for a in report.articles]
    read_count = len(articles)
    normalised = normalise_articles(articles, keep_linked=config.links is not None)
    links_section = None
    if config.links is not None:
        linked, links_section = run_link_stage(normalised.articles, config.links)
        normalised.articles = [a for a in linked if a.title.strip() or a.text.strip()]
        # A bare link whose page could not be read has nothing to classify.
        normalised.empty_skipped += len(linked) - len(normalised.articles)
    if config.dedupe.enabled:
        log.info("dedupe: %d articles (threshold %.2f, %d permutations)",
                 len(normalised.articles), config.dedupe.threshold, config.dedupe.num_perm)
        deduped = deduplicate(normalised.articles, config.dedupe.threshold,
                              config.dedupe.num_perm, config.dedupe.shingle)
        kept, carried = carry_labels_from_duplicates(deduped)
        dedupe_counts = {"input": len(normalised.articles), "kept": len(kept),
                         "exact": deduped.exact_count, "near": deduped.near_count, **carried}
        duplicates = [{"id": d.article.id, "source": d.article.source,
                       "duplicate_of": d.duplicate_of.id, "kind": d.kind,
                       "similarity": round(d.similarity, 4)} for d in deduped.duplicates]
    else:
        kept, duplicates = normalised.articles, []
        dedupe_counts = {"input": len(kept), "kept": len(kept), "exact": 0, "near": 0,
                         "labels_carried": 0, "label_conflicts": 0}
    kept, stages = run_stages(config, kept)
    splits, undated_skipped = split_articles(kept, config.split)

    provenance = {
        "build_key": key,
        "version": key[:12],
        "pipeline_version": PIPELINE_VERSION,
        "config": config.model_dump(mode="json"),
        "sources": {r.name: r.summary() for r in reports},
        "source_files": {i.get("path") or i["url"]: i["sha256"]
                         for r in reports for i in r.inputs},
        "counts": {
            "read": read_count,
            "skipped_items": sum(r.skipped for r in reports),
            "failed_inputs": sum(len(r.failed_inputs) for r in reports),
            "empty_skipped": normalised.empty_skipped,
            "ids_renamed": normalised.ids_renamed,
            "dedupe": dedupe_counts,
            "after_stages": len(kept),
            "undated_skipped": undated_skipped,
            "written": sum(len(v) for v in splits.values()),
        },
        "dedupe": {**config.dedupe.model_dump(), "duplicates": duplicates},
        "links": _written_links(links_section, splits),
        "stages": stages,
        "label_rule": _label_rule(config, stages),
        "train_end": str(config.split.train_end),
        **_date_range(kept),
    }
    # Staged beside the target under a hidden name, views included, then renamed into
    # place: a reader never sees splits without their views or an old manifest.
    build_root = out_dir.with_name(f".{out_dir.name}.build")
    shutil.rmtree(build_root, ignore_errors=True)
    staged = build_root / out_dir.name
    try:
        dated_splits = {k: v for k, v in splits.items() if k != UNDATED_SPLIT}
        manifest = dataset_files.write_dataset(staged, dated_splits, provenance)
        if UNDATED_SPLIT in splits:
            manifest.splits[UNDATED_SPLIT] = _write_undated_split(staged, splits[UNDATED_SPLIT])
        if config.views.enabled:
            manifest.views = write_views(staged, splits, config.views, tokenizer)
        manifest.build_seconds = round(time.perf_counter() - started, 3)
        manifest.write(staged)
        _replace_dir(staged, out_dir)
    finally:
        shutil.rmtree(build_root, ignore_errors=True)
    log.info("dataset %s written: %d articles in %d splits (%d read, %d exact + %d near "
             "duplicates dropped)", out_dir, provenance["counts"]["written"], len(splits),
             read_count, dedupe_counts["exact"], dedupe_counts["near"])
    return manifest
