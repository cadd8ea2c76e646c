"""Step 4 of the build: run the configured optional stages, each cached by its input.

A stage runs when its section of the config is set and ``pipeline.<stage>`` imports
and has ``run_stage(articles, settings) -> StageOutput`` (or an adapter here for the
modules that have none: relevance, topics, teacher); otherwise it is skipped with a log
line. Its output is cached under ``work_dir``, keyed by the hash of its input articles,
settings and module source, so a rebuild after a change further down the line does not
recompute relevance scores, topics or trends.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import dataset as dataset_files
from pipeline.article import Article
from pipeline.build_config import PIPELINE_VERSION, PipelineConfig
from pipeline.stage import STAGES, StageOutput, StageRunner

log = logging.getLogger(__name__)


def _relevance_stage(articles: list[Article], settings: dict[str, Any]) -> StageOutput:
    """Keep the articles that resemble the reference articles (:mod:`pipeline.relevance`).

    ``settings``: ``references`` (a JSONL of relevant articles' records) plus the fields
    of ``RelevanceConfig``. Rejected and unscorable articles leave the dataset, counted.
    """
    from pipeline.relevance import RelevanceConfig, RelevanceFilter

    settings = dict(settings)
    references = settings.pop("references", None)
    if references is None:
        raise ValueError("the relevance stage needs `references`: a JSONL file of records "
                         "of articles worth screening")
    config = RelevanceConfig.model_validate(settings)
    result = RelevanceFilter(Path(references), config).filter(articles)
    return StageOutput(result.kept, {
        "kept": len(result.kept), "rejected": len(result.rejected),
        "skipped": len(result.skipped)},
        f"kept: mean cosine similarity to the top {config.top_k} of the references in "
        f"{references} >= {config.threshold}")


def _topics_stage(articles: list[Article], settings: dict[str, Any]) -> StageOutput:
    """Topics per article (:mod:`pipeline.topics`: an LLM when ``base_url`` is set, else
    offline keyphrases). ``settings``: the fields of ``TopicConfig`` plus
    ``keep_existing`` (default true): articles that already have topics (the Reuters
    topic codes the annotation label source reads, a record's own) keep them."""
    from pipeline.topics import TopicConfig, make_topic_extractor

    settings = dict(settings)
    keep_existing = bool(settings.pop("keep_existing", True))
    config = TopicConfig.model_validate(settings)
    todo = [i for i, a in enumerate(articles) if not (keep_existing and a.topics)]
    out = list(articles)
    counts: dict[str, Any] = {"kept_existing": len(articles) - len(todo)}
    if todo:
        extractor = make_topic_extractor(config)
        for position, topics in zip(todo, extractor.extract([articles[i] for i in todo])):
            out[position] = articles[position].model_copy(update={"topics": topics})
        counts.update(asdict(extractor.stats))
    extractor_name = f"LLM {config.model} at {config.base_url}" if config.base_url else \
        "offline keyphrases (KeyBERT)"
    return StageOutput(out, counts, f"topics by {extractor_name}")


def _teacher_stage(articles: list[Article], settings: dict[str, Any]) -> StageOutput:
    """A teacher LLM's vote on every article (:mod:`pipeline.teacher`), stored in the
    article's ``labels`` (replacing an older teacher vote) for the label stage.
    ``settings``: the fields of ``TeacherConfig``."""
    from pipeline.teacher import TeacherConfig, TeacherLabeler

    config = TeacherConfig.model_validate(settings)
    with TeacherLabeler(config) as teacher:
        votes = teacher.label_all(articles)
        counts = asdict(teacher.stats)
    out = []
    for article, vote in zip(articles, votes, strict=True):
        others = [v for v in (getattr(article, "labels", None) or [])
                  if (v.get("source") if isinstance(v, dict) else None) != vote.source]
        out.append(article.model_copy(update={"labels": [*others, vote.model_dump(mode="json")]}))
    return StageOutput(out, counts, f"teacher {config.model} at {config.base_url}")


_STAGE_ADAPTERS: dict[str, StageRunner] = {
    "relevance": _relevance_stage, "topics": _topics_stage, "teacher": _teacher_stage}
"""How the build drives modules that have no ``run_stage`` of their own."""


def _stage_runner(name: str) -> StageRunner | None:
    """The function running stage ``name``: the module's ``run_stage``, else this
    module's adapter for it; None when the module is not there (the stage is then
    skipped)."""
    try:
        module = importlib.import_module(f"pipeline.{name}")
    except ImportError as exc:
        log.warning("stage %s skipped: pipeline.%s cannot be imported (%s)", name, name, exc)
        return None
    runner = getattr(module, "run_stage", None) or _STAGE_ADAPTERS.get(name)
    if runner is None:
        log.warning("stage %s skipped: pipeline.%s has no run_stage(articles, settings)",
                    name, name)
    return runner


def stage_code_hash(name: str) -> str | None:
    """sha256 of ``pipeline/<name>.py``, found without importing it (None if absent).

    Part of the stage cache key and of the build key, so a changed stage (a new label
    rule, a fixed topic parser) is recomputed rather than served stale from a cache.
    """
    try:
        spec = importlib.util.find_spec(f"pipeline.{name}")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return dataset_files.file_sha256(Path(spec.origin))


def _records_hash(articles: list[Article]) -> str:
    digest = hashlib.sha256()
    for article in articles:
        digest.update(json.dumps(article.to_record(), sort_keys=True,
                                 ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def run_cached_stage(name: str, runner: StageRunner, articles: list[Article],
                     settings: dict[str, Any], work_dir: Path) -> tuple[StageOutput, bool]:
    """Run a stage, or load its output from ``work_dir`` when the same articles went
    through it with the same settings before. Returns the output and whether it was a
    cache hit."""
    code = Path(inspect.getsourcefile(runner) or "")
    key = hashlib.sha256(json.dumps({
        "stage": name, "settings": settings, "version": PIPELINE_VERSION,
        "code": dataset_files.file_sha256(code) if code.is_file() else None,
        "module": stage_code_hash(name),
        "input": _records_hash(articles)}, sort_keys=True, default=str).encode()).hexdigest()
    path = work_dir / name / f"{key}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        log.info("stage %s: cached output %s", name, path)
        return StageOutput([Article.from_record(r) for r in cached["records"]],
                           cached["counts"], cached.get("description", "")), True
    output = runner(articles, settings)
    if any(v for k, v in output.counts.items() if k.endswith("_failed")):
        # Something failed (e.g. topics whose trends ran out of retries): a cached output
        # would never retry them. The trends stage has its own per-query cache anyway.
        log.info("stage %s: not cached, %s", name,
                 {k: v for k, v in output.counts.items() if k.endswith("_failed")})
        return output, False
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({
        "counts": output.counts, "description": output.description,
        "records": [a.to_record() for a in output.articles]}, ensure_ascii=False, default=str),
        encoding="utf-8")
    staging.replace(path)  # atomic: a crashed run never leaves half a cache entry
    return output, False


def run_stages(config: PipelineConfig, articles: list[Article]) -> tuple[list[Article], dict]:
    """Run the configured optional stages; return the articles and, per stage, whether
    it ran, with which settings, its counts and whether its output came from the cache."""
    record: dict[str, Any] = {}
    for name in STAGES:
        settings = getattr(config, name)
        if settings is None:
            log.info("stage %s: not configured, skipped", name)
            record[name] = {"ran": False, "reason": "not configured"}
            continue
        runner = _stage_runner(name)
        if runner is None:
            record[name] = {"ran": False, "reason": f"pipeline.{name} not available",
                            "settings": settings}
            continue
        started = time.perf_counter()
        output, cached = run_cached_stage(name, runner, articles, settings,
                                          config.stage_work_dir())
        log.info("stage %s: %d articles in, %d out%s", name, len(articles),
                 len(output.articles), " (cached)" if cached else "")
        record[name] = {"ran": True, "settings": settings, "cached": cached,
                        "articles_in": len(articles), "articles_out": len(output.articles),
                        "counts": output.counts, "description": output.description,
                        "seconds": round(time.perf_counter() - started, 3)}
        articles = output.articles
    return articles, record
