"""The settings of one dataset build, as read from its YAML (``signals data build --config``).

:class:`PipelineConfig` names the sources (feeds, files, Reuters, an IMAP mailbox), the
link stage, dedupe, the optional stages' sections, the temporal split and the training
views. Every stage section is validated by that stage's own settings model when the
config loads (:func:`check_stage_settings`), not when the stage is reached after minutes
of reading sources. Ingestion's feeds and mailboxes extend :class:`FeedSource` and
:class:`pipeline.imap.ImapConfig` with a schedule.
"""

from __future__ import annotations

import importlib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic import model_validator

from pipeline.feeds import DEFAULT_FEED_TIMEOUT_S
from pipeline.link_settings import LinkSettings
from pipeline.settings import Paths
from pipeline.stage import STAGES

PIPELINE_VERSION = 1
"""Bumped whenever the build changes what it writes, so existing datasets get rebuilt
(part of the build key and of every stage cache key)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedSource(_Strict):
    """An RSS 0.9x/1.0/2.0 or Atom feed fetched over HTTP(S)."""

    kind: Literal["rss"] = "rss"
    name: str = Field(description="Source name written into each article's `source`.")
    url: str = Field(description="The feed's URL.")
    timeout_s: float = Field(default=DEFAULT_FEED_TIMEOUT_S, gt=0,
                             description="Seconds the whole fetch may take (redirects and "
                             "a slow body included) before giving up.")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Non-global networks (CIDR) this feed may be fetched from, e.g. a feed "
        "on your own intranet; default none: only global addresses (pipeline/egress.py).")


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
    """The link stage of the build: :class:`pipeline.link_settings.LinkSettings` (what to fetch,
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
