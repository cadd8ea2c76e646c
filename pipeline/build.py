"""The pipeline orchestrator: sources → a versioned dataset directory with training views.

``build_dataset(config)`` runs, in order:

1. **collect**: read every configured source (feeds over HTTP, ``.eml``/mbox files or
   globs, JSONL/CSV record files, the Reuters-21578 collection, an IMAP mailbox). Each
   raw input is hashed (sha256 of the file or of the feed's HTTP body) before it is
   parsed. A source that cannot be read at all (missing file, HTTP error, timeout) is
   skipped with a log line and counted; the others go on.
2. **normalise**: dates to aware UTC datetimes, whitespace trimmed, an item with
   neither title nor text skipped (counted), an id clash between different items
   resolved by prefixing the later one's source (logged, counted).
2b. **links** (when ``links`` is set): items whose text is short or a teaser get their
   link followed and the article's main text extracted (:mod:`pipeline.links`); the
   same article reached through two links is kept once (canonical URL). Each item's
   provenance (teaser/page/both, fetch status, final URL, extractor) goes into the
   manifest's ``links`` section, which ``signals data stats`` reads.
3. **dedupe**: exact copies (content hash) and near copies (MinHash/LSH) dropped, the
   earliest copy kept (:mod:`pipeline.dedupe`); a kept copy without a label takes the
   label of a dropped one.
4. **optional stages** (relevance filter, topics, trends, teacher, labels), each run
   only when its section of the config is set *and* its module is importable and has
   ``run_stage(articles, settings) -> StageOutput``; otherwise skipped with a log
   line. The manifest records which stages ran, with which settings and counts.
5. **split and write**: temporal splits (:func:`pipeline.dataset.temporal_splits`),
   written atomically with :func:`pipeline.dataset.write_dataset`, plus, when asked,
   the training views beside them: ``views/<split>.sft.jsonl`` (prompt/completion),
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

import glob
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic import model_validator

from pipeline import dataset as dataset_files
from pipeline import sources as readers
from pipeline.article import Article
from pipeline.dedupe import DedupeResult, content_hash, deduplicate
from pipeline.link_sources import read_link_list, read_newsletter_links
from pipeline.links import LinkCounters, LinkSettings, drop_link_duplicates, enrich_articles
from pipeline.settings import Paths
from pipeline.stage import STAGES, StageOutput, StageRunner

log = logging.getLogger(__name__)

PIPELINE_VERSION = 1
"""Bumped whenever the build changes what it writes, so existing datasets get rebuilt."""

DEFAULT_TOKENIZER_NAME = "SmolLM2-135M-Instruct"
UNDATED_SPLIT = "undated"


# --------------------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedSource(_Strict):
    """An RSS 0.9x/1.0/2.0 or Atom feed fetched over HTTP(S)."""

    kind: Literal["rss"] = "rss"
    name: str = Field(description="Source name written into each article's `source`.")
    url: str = Field(description="The feed's URL.")
    timeout_s: float = Field(default=readers.DEFAULT_FEED_TIMEOUT_S, gt=0,
                             description="Seconds to wait for the feed before giving up.")


class FileSource(_Strict):
    """Files on disk: e-mail newsletters (.eml, mbox), records (JSONL, CSV), link lists
    (``links``: CSV/JSONL of URLs with optional dates and labels) or the stories an
    e-mail newsletter links to (``newsletter-links``: one item per linked story). The
    last two give items whose text the link stage (``links``) fills."""

    kind: Literal["eml", "mbox", "jsonl", "csv", "links", "newsletter-links"]
    name: str = Field(description="Source name written into articles that do not name one.")
    paths: list[str] = Field(
        min_length=1, description="Files or glob patterns (`newsletters/*.eml`); relative "
        "paths are relative to the working directory. A pattern matching nothing and a "
        "missing file are logged and counted as failed inputs.")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ReutersSource(_Strict):
    """The Reuters-21578 collection (``reut2-*.sgm``), every document of it."""

    kind: Literal["reuters"] = "reuters"
    name: str = Field(default="reuters21578", description="Source name of its articles.")
    directory: Path | None = Field(
        default=None, description="Folder of reut2-*.sgm; default $SIGNALS_REUTERS_DIR.")
    indexed_only: bool = Field(
        default=True, description="Keep only documents indexed for topics (TOPICS=\"YES\"). "
        "The others carry no topic judgement; kept, they are unlabelled (signal None).")
    annotate_acq: bool = Field(
        default=True, description="Label indexed documents by the `acq` rule (signal = "
        "filed under acq). Off: all Reuters articles are unlabelled, for label stages.")


class ImapSource(_Strict):
    """Newsletters in an IMAP mailbox (:mod:`pipeline.imap`)."""

    kind: Literal["imap"] = "imap"
    name: str = Field(description="Source name written into each article's `source`.")
    imap: dict[str, Any] = Field(
        description="Fields of pipeline.imap.ImapConfig (host, username, password_env, "
        "mailbox, criteria, ...). A dataset build should read a fixed set of messages "
        "(criteria 'ALL' or 'SINCE', mark_seen off): with 'UNSEEN' + mark_seen, the "
        "next build would see only newer messages and the dataset would shrink.")


SourceConfig = Annotated[FeedSource | FileSource | ReutersSource | ImapSource,
                         Field(discriminator="kind")]


class DedupeConfig(_Strict):
    """Exact and near-duplicate removal (:func:`pipeline.dedupe.deduplicate`)."""

    enabled: bool = Field(default=True, description="Off: keep every copy (not advised).")
    threshold: float = Field(
        default=0.8, gt=0, le=1,
        description="Estimated Jaccard similarity of word 5-shingle sets at or above which "
        "an article is a near copy of an earlier one. 0.8 catches syndicated copies with a "
        "rewritten first sentence and an added footer once the story has about 300 words "
        "(see pipeline/dedupe.py for the arithmetic), while two different reports of one "
        "event share well under 0.1 of their 5-word runs. Measured on all 19,000 "
        "Reuters-21578 documents (254 exact copies): 282 near copies at 0.7, 216 at 0.8, "
        "138 at 0.9. Sampled pairs between 0.7 and 0.9 were re-filings of one story (a "
        "typo or headline fixed, a sentence reworded), so 0.9 would keep dozens of real "
        "copies; the one wrong merge found at 0.8 is a pair of one-line items from a "
        "template that differ only in the company ('SUN / PHILLIPS RAISES CRUDE POSTINGS "
        "50 CTS', 0.83): below ~30 words, shingles cannot tell a copy from a template "
        "(3 of the 216 pairs are that short). 0.7 catches more re-filings at a higher risk "
        "of such merges.")
    num_perm: int = Field(
        default=256, ge=2, description="MinHash permutations; standard error of the "
        "similarity estimate is sqrt(J(1-J)/num_perm), about 0.025 at J=0.8 with 256.")
    shingle: int = Field(default=5, ge=1, description="Words per shingle.")


class SplitConfig(_Strict):
    """How articles are split by publication date."""

    train_end: date = Field(description="Last day of the training window; every later "
                            "month becomes its own test split named YYYY-MM.")
    undated: Literal["skip", "split"] = Field(
        default="skip", description="Articles without a date cannot be placed in time: "
        "`skip` leaves them out (logged, counted), `split` writes them to an `undated` "
        "split that no temporal evaluation uses.")


class ViewsConfig(_Strict):
    """Training views written beside the splits (need the base model's tokenizer)."""

    enabled: bool = Field(default=False, description="Write views/<split>.{sft,dpo,reward}.jsonl.")
    tokenizer: Path | None = Field(
        default=None, description="Tokenizer directory (the base model's); default "
        "$SIGNALS_DATA_DIR/models/SmolLM2-135M-Instruct.")
    max_prompt_tokens: int = Field(
        default=512, ge=16, description="Prompt budget; longer articles are cut by "
        "pipeline.prompt.encode_prompt, exactly as at serving time.")


class LinkStageConfig(LinkSettings):
    """The link stage of the build: :class:`pipeline.links.LinkSettings` (what to fetch,
    how politely) plus how long the whole stage may take."""

    model_config = ConfigDict(extra="forbid")

    deadline_s: float | None = Field(
        default=None, gt=0,
        description="Longest time for the whole stage; items whose page is not read by "
        "then keep their own text (``fetch_status: deadline``). None: no limit.")


class PipelineConfig(_Strict):
    """One dataset build: where the articles come from, what is done to them, where
    the dataset goes. Loaded from YAML with :func:`load_pipeline_config`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Dataset name: the directory under datasets_dir.")
    sources: list[SourceConfig] = Field(min_length=1, description="Where articles come from.")
    links: LinkStageConfig | None = Field(
        default=None, description="The link stage (pipeline.links): follow the links of "
        "short or teaser items and use the extracted article text. Absent = not run.")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig, description="Duplicate removal.")
    relevance: dict[str, Any] | None = Field(
        default=None, description="Embedding relevance filter (pipeline.relevance): "
        "`references` (JSONL of relevant articles) plus RelevanceConfig fields; rejected "
        "articles leave the dataset, counted. Absent = stage not run.")
    topics: dict[str, Any] | None = Field(
        default=None, description="Topics (pipeline.topics): TopicConfig fields (an LLM "
        "endpoint, or offline keyphrases) plus `keep_existing` (default true: articles "
        "with topics keep them). Absent = stage not run.")
    trends: dict[str, Any] | None = Field(
        default=None, description="Settings of pipeline.trends (Google-Trends growth per "
        "topic); absent = stage not run.")
    teacher: dict[str, Any] | None = Field(
        default=None, description="Teacher LLM votes (pipeline.teacher): TeacherConfig "
        "fields; each vote is stored in the article's `labels` for the label stage, "
        "which must list `teacher` among its sources to use it. Absent = stage not run.")
    labels: dict[str, Any] | None = Field(
        default=None, description="Settings of pipeline.labels (a LabelConfig): label "
        "sources and the rule combining their votes; absent = labels as the sources "
        "gave them.")
    split: SplitConfig = Field(description="Temporal split.")
    views: ViewsConfig = Field(default_factory=ViewsConfig, description="Training views.")
    datasets_dir: Path | None = Field(
        default=None, description="Where datasets go; default $SIGNALS_DATA_DIR/datasets.")
    work_dir: Path | None = Field(
        default=None, description="Stage cache; default $SIGNALS_DATA_DIR/work/pipeline.")
    strict: bool = Field(default=False, description="Fail the build when a source cannot "
                         "be read, instead of skipping it with a log line.")

    @model_validator(mode="after")
    def _stage_settings_are_valid(self) -> PipelineConfig:
        # Checked now, not when the stage is reached after minutes of reading sources.
        for name in STAGES:
            settings = getattr(self, name)
            if settings is not None:
                check_stage_settings(name, settings)
        for source in self.sources:
            if isinstance(source, ImapSource):
                from pipeline.imap import ImapConfig

                ImapConfig.model_validate({**source.imap, "source": source.name})
        return self

    def output_dir(self) -> Path:
        return (self.datasets_dir or Paths().datasets_dir) / self.name

    def stage_work_dir(self) -> Path:
        return self.work_dir or Paths().data_dir / "work" / "pipeline"


STAGE_SETTINGS: dict[str, tuple[str, frozenset[str]]] = {
    "relevance": ("RelevanceConfig", frozenset({"references"})),
    "topics": ("TopicConfig", frozenset({"keep_existing"})),
    "trends": ("TrendConfig", frozenset()),
    "teacher": ("TeacherConfig", frozenset()),
    "labels": ("LabelConfig", frozenset()),
}
"""Per stage: its settings model in ``pipeline.<stage>``, and the keys the build's
adapter reads itself (not fields of that model)."""


def check_stage_settings(name: str, settings: dict[str, Any]) -> None:
    """Validate a stage's section with the stage's own settings model; a stage whose
    module cannot be imported is skipped later with a log line, as when it runs."""
    if name == "relevance" and "references" not in settings:
        raise ValueError("relevance: the stage needs `references`, a JSONL file of records "
                         "of articles worth screening")
    model_name, adapter_keys = STAGE_SETTINGS[name]
    try:
        module = importlib.import_module(f"pipeline.{name}")
    except ImportError:
        return
    model = getattr(module, model_name)
    try:
        model.model_validate({k: v for k, v in settings.items() if k not in adapter_keys})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}"
                             for e in error.errors())
        raise ValueError(f"{name}: {problems}") from None


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """A :class:`PipelineConfig` from a YAML file; a clear error names the bad field."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of PipelineConfig fields")
    return PipelineConfig.model_validate(data)


# --------------------------------------------------------------------------- collect


@dataclass
class SourceReport:
    """What one configured source gave: its raw inputs with their hashes, articles,
    skipped items and failures."""

    name: str
    kind: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    articles: list[Article] = field(default_factory=list)
    skipped: int = 0
    problems: int = 0
    failed_inputs: list[dict[str, str]] = field(default_factory=list)

    def add(self, result: readers.ReadResult) -> None:
        self.articles.extend(result.articles)
        self.skipped += result.skipped
        self.problems += len(result.problems)

    def fail(self, where: str, reason: str, strict: bool) -> None:
        message = f"source {self.name!r}: {where}: {reason}"
        if strict:
            raise RuntimeError(f"{message} (strict build: stopped)")
        log.warning("%s; input skipped", message)
        self.failed_inputs.append({"input": where, "reason": reason})

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": self.inputs, "articles": len(self.articles),
                "skipped": self.skipped, "problems": self.problems,
                "failed_inputs": self.failed_inputs}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expand(patterns: list[str]) -> list[tuple[str, list[Path]]]:
    """Each pattern with the files it names, sorted; a plain path names itself."""
    expanded = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            expanded.append((pattern, sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                                             if Path(p).is_file())))
        else:
            expanded.append((pattern, [Path(pattern)]))
    return expanded


_FILE_READERS: dict[str, Callable[[Path, str], readers.ReadResult]] = {
    "eml": readers.read_eml, "mbox": readers.read_mbox,
    "jsonl": readers.read_jsonl, "csv": readers.read_csv,
    "links": read_link_list, "newsletter-links": read_newsletter_links,
}


def _read_files(source: FileSource, report: SourceReport, strict: bool) -> None:
    read = _FILE_READERS[source.kind]
    for pattern, paths in _expand(source.paths):
        if not paths:
            report.fail(pattern, "pattern matches no file", strict)
        for path in paths:
            if not path.is_file():
                report.fail(str(path), "no such file", strict)
                continue
            report.inputs.append({"path": str(path), "sha256": dataset_files.file_sha256(path),
                                  "bytes": path.stat().st_size})
            try:
                report.add(read(path, source.name))
            # Readers skip bad items themselves; what escapes is a file that cannot be
            # opened or is not of the kind at all (an mbox that is a directory, …).
            except (OSError, ValueError, UnicodeError) as exc:
                report.inputs.pop()
                report.fail(str(path), f"unreadable ({type(exc).__name__}: {exc})", strict)


def _read_feed(source: FeedSource, report: SourceReport, strict: bool) -> None:
    try:
        response = readers.fetch_feed(source.url, source.timeout_s)
    except readers.FeedError as exc:
        report.fail(source.url, exc.reason, strict)
        return
    report.inputs.append({"url": source.url, "sha256": _sha256(response.content),
                          "bytes": len(response.content)})
    report.add(readers.parse_feed(response.content, source.name, url=str(response.url),
                                  http_charset=response.charset_encoding))


def read_reuters(directory: Path, source: str = "reuters21578", indexed_only: bool = True,
                 annotate_acq: bool = True, limit: int | None = None,
                 progress: bool = False) -> readers.ReadResult:
    """Reuters-21578 documents as articles: every ``<REUTERS>`` element of every
    ``reut2-*.sgm``; unindexed ones are left out (``indexed_only``, counted as skipped)
    or kept unlabelled. Indexed ones carry their topics and, with ``annotate_acq``, the
    ``acq`` label (:func:`pipeline.reuters.to_article`). ``limit`` stops after that many
    articles; ``progress`` shows a bar over the files."""
    from tqdm import tqdm

    from pipeline import reuters

    files = sorted(Path(directory).glob("reut2-*.sgm"))
    if not files:
        raise FileNotFoundError(f"no reut2-*.sgm files in {directory}")
    result = readers.ReadResult()
    unindexed = 0
    for path in tqdm(files, desc="parse reut2-*.sgm", unit="file", disable=not progress):
        # The collection is Latin-1; reading it as such never fails on a byte.
        for doc in reuters.parse_sgml(path.read_text(encoding="latin-1")):
            if doc.indexed:
                article = reuters.to_article(doc)
                if not annotate_acq:
                    article = article.model_copy(update={"signal": None})
            elif indexed_only:
                unindexed += 1
                continue
            else:
                article = Article(id=f"reuters-{doc.new_id}", title=doc.title,
                                  date_published=doc.date, text=doc.body, source=source)
            if source != reuters.SOURCE:
                article = article.model_copy(update={"source": source})
            result.articles.append(article)
            if limit is not None and len(result.articles) >= limit:
                break
        if limit is not None and len(result.articles) >= limit:
            break
    if unindexed:
        # Not a defect of the data, so not a "problem": these are left out by design.
        result.skipped += unindexed
        log.info("reuters: %d documents without a topic judgement left out", unindexed)
    return result


def _read_reuters(source: ReutersSource, report: SourceReport, strict: bool) -> None:
    directory = source.directory or Paths().reuters_dir
    files = sorted(Path(directory).glob("reut2-*.sgm"))
    if not files:
        report.fail(str(directory), "no reut2-*.sgm files", strict)
        return
    report.inputs.extend({"path": str(p), "sha256": dataset_files.file_sha256(p),
                          "bytes": p.stat().st_size} for p in files)
    report.add(read_reuters(directory, source.name, source.indexed_only, source.annotate_acq,
                            progress=True))


def _read_imap(source: ImapSource, report: SourceReport, strict: bool) -> None:
    from pipeline.imap import ImapConfig, ImapError, read_imap

    imap = ImapConfig.model_validate({**source.imap, "source": source.name})
    where = f"imap://{imap.username}@{imap.host}/{imap.mailbox}"
    try:
        result = read_imap(imap)
    except ImapError as exc:
        report.fail(where, exc.reason, strict)
        return
    # No raw bytes come back from a mailbox: the articles read stand for the input.
    records = json.dumps([a.to_record() for a in result.articles], sort_keys=True,
                         ensure_ascii=False, default=str).encode("utf-8")
    report.inputs.append({"url": where, "sha256": _sha256(records), "bytes": len(records)})
    report.add(result)


def collect_sources(config: PipelineConfig) -> list[SourceReport]:
    """Read every configured source; see the module docstring for failure handling."""
    reports = []
    for source in config.sources:
        report = SourceReport(source.name, source.kind)
        if isinstance(source, FeedSource):
            _read_feed(source, report, config.strict)
        elif isinstance(source, ReutersSource):
            _read_reuters(source, report, config.strict)
        elif isinstance(source, ImapSource):
            _read_imap(source, report, config.strict)
        else:
            _read_files(source, report, config.strict)
        log.info("source %s (%s): %d articles, %d items skipped, %d inputs failed",
                 source.name, source.kind, len(report.articles), report.skipped,
                 len(report.failed_inputs))
        reports.append(report)
    return reports


# --------------------------------------------------------------------------- normalise


def _utc(published: datetime | date | None) -> datetime | None:
    if published is None:
        return None
    if not isinstance(published, datetime):
        published = datetime.combine(published, datetime.min.time())
    # Sources already give UTC; naive record dates are read as UTC, as dedupe does.
    if published.tzinfo is None:
        return published.replace(tzinfo=timezone.utc)
    return published.astimezone(timezone.utc)


@dataclass
class NormaliseResult:
    articles: list[Article]
    empty_skipped: int = 0
    ids_renamed: int = 0


def normalise_articles(articles: list[Article], keep_linked: bool = False) -> NormaliseResult:
    """Uniform articles: UTC dates, trimmed title/text, unique ids.

    An article with neither title nor text is skipped (logged), unless ``keep_linked``
    and it has a link (a link-list row: the link stage reads its text). Ids must be unique in a
    dataset (views and label stores key on them), but two sources can reuse one id for
    different items; the later one becomes ``<source>/<id>`` (logged). Identical copies
    with one id are left for dedupe to drop.
    """
    result = NormaliseResult([])
    seen: dict[str, str] = {}  # id -> content hash of the article holding it
    for article in articles:
        problem = article.content_problem()  # the rule the APIs refuse articles by
        if problem is not None and not (keep_linked and article.link):
            log.warning("%s (from %s); skipped", problem, article.source)
            result.empty_skipped += 1
            continue
        title, text = article.title.strip(), article.text.strip()
        article = article.model_copy(update={
            "title": title, "text": text, "date_published": _utc(article.date_published)})
        digest = content_hash(article)
        key = str(article.id)
        if key in seen and seen[key] != digest:
            new_id = f"{article.source}/{article.id}"
            suffix = 2
            while new_id in seen:
                new_id, suffix = f"{article.source}/{article.id}#{suffix}", suffix + 1
            log.warning("id %r is used by two different articles; the one from %s becomes %r",
                        article.id, article.source, new_id)
            article = article.model_copy(update={"id": new_id})
            key = new_id
            result.ids_renamed += 1
        seen.setdefault(key, digest)
        result.articles.append(article)
    return result


LABEL_FIELDS = ("signal", "gpt_signal")


def carry_labels_from_duplicates(result: DedupeResult) -> tuple[list[Article], dict[str, int]]:
    """The kept articles, each given the labels of its dropped copies where it has none.

    The earliest copy is kept for its date, but a later copy may be the one that was
    labelled (an annotated archive re-filing a wire story): dropping that label would
    lose accepted data. When copies disagree, the kept copy's own label stands (the
    disagreement is counted); among dropped copies the first one in input order wins.
    """
    positions = {id(article): i for i, article in enumerate(result.kept)}
    updates: dict[int, dict[str, Any]] = {}
    counts = {"labels_carried": 0, "label_conflicts": 0}
    for duplicate in result.duplicates:
        position = positions[id(duplicate.duplicate_of)]
        kept = result.kept[position]
        pending = updates.setdefault(position, {})
        for name in LABEL_FIELDS:
            theirs = getattr(duplicate.article, name)
            mine = pending.get(name, getattr(kept, name))
            if theirs is None:
                continue
            if mine is None:
                pending[name] = theirs
                counts["labels_carried"] += 1
            elif mine != theirs:
                counts["label_conflicts"] += 1
                log.warning("copies disagree on %s: %r (kept, %s) vs %r (dropped %r, %s); "
                            "the kept copy's label stands", name, kept.id, mine,
                            duplicate.article.id, theirs)
    articles = [a.model_copy(update=updates[i]) if updates.get(i) else a
                for i, a in enumerate(result.kept)]
    return articles, counts


# --------------------------------------------------------------------------- stages


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
    key = _sha256(json.dumps({
        "stage": name, "settings": settings, "version": PIPELINE_VERSION,
        "code": dataset_files.file_sha256(code) if code.is_file() else None,
        "module": stage_code_hash(name),
        "input": _records_hash(articles)}, sort_keys=True, default=str).encode())
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


# --------------------------------------------------------------------------- views


def _default_tokenizer_dir() -> Path:
    return Paths().models_dir / DEFAULT_TOKENIZER_NAME


VIEW_CHUNK = 256


def reward_rows(dpo_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Preference rows in TRL ``RewardTrainer``'s implicit-prompt format: ``chosen`` and
    ``rejected`` are the full texts (prompt + answer), so the reward model scores the
    whole exchange. Other columns are carried along for bookkeeping."""
    return [{**{k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")},
             "chosen": row["prompt"] + row["chosen"],
             "rejected": row["prompt"] + row["rejected"]} for row in dpo_rows]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return {"file": f"views/{path.name}", "rows": len(rows),
            "sha256": dataset_files.file_sha256(path)}


def write_views(directory: Path, splits: dict[str, list[Article]], config: ViewsConfig,
                tokenizer: Any = None) -> dict[str, Any]:
    """Write ``views/<split>.{sft,dpo,reward}.jsonl`` for every split into ``directory``;
    return their manifest entries. Only labelled articles make rows."""
    from tqdm import tqdm

    from pipeline import views  # one place turns articles into training rows

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer_dir = config.tokenizer or _default_tokenizer_dir()
        if not Path(tokenizer_dir).is_dir():
            raise FileNotFoundError(
                f"views need the base model's tokenizer; none at {tokenizer_dir} "
                "(run `signals model prepare` or set views.tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = Path(directory) / "views"
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for split, articles in splits.items():
        labelled = [a for a in articles if a.signal is not None]
        sft: list[dict[str, Any]] = []
        dpo: list[dict[str, Any]] = []
        # In chunks, only to show progress: tokenizing ~10,000 prompts takes minutes.
        with tqdm(total=len(labelled), desc=f"views {split}", unit="article") as bar:
            for start in range(0, len(labelled), VIEW_CHUNK):
                chunk = labelled[start:start + VIEW_CHUNK]
                sft += views.sft_rows(chunk, tokenizer, config.max_prompt_tokens)
                dpo += views.preference_rows(chunk, tokenizer, config.max_prompt_tokens)
                bar.update(len(chunk))
        entries[split] = {
            "sft": _write_rows(out / f"{split}.sft.jsonl", sft),
            "dpo": _write_rows(out / f"{split}.dpo.jsonl", dpo),
            "reward": _write_rows(out / f"{split}.reward.jsonl", reward_rows(dpo)),
        }
        log.info("views %s: %d sft, %d preference rows", split, len(sft), len(dpo))
    return {"max_prompt_tokens": config.max_prompt_tokens,
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")), "splits": entries}


# --------------------------------------------------------------------------- build


def build_key(config: PipelineConfig, reports: list[SourceReport]) -> str:
    """sha256 of what determines the dataset: pipeline version, config (less where it
    is written) and the hash of every raw input."""
    settings = config.model_dump(mode="json", exclude={"datasets_dir", "work_dir"})
    inputs = [[r.name, [i["sha256"] for i in r.inputs], r.failed_inputs] for r in reports]
    stage_code = {name: stage_code_hash(name) for name in STAGES
                  if getattr(config, name) is not None}
    return _sha256(json.dumps({"version": PIPELINE_VERSION, "config": settings,
                               "inputs": inputs, "stage_code": stage_code},
                              sort_keys=True).encode())


def _date_range(articles: list[Article]) -> dict[str, str | None]:
    days = sorted(a.date_published.date().isoformat() for a in articles
                  if isinstance(a.date_published, datetime))
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
