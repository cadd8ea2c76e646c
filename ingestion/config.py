"""Typed configuration of the ingestion service (``SIGNALS_INGEST_*`` env vars, YAML).

Precedence, highest first: explicit overrides (command-line flags), environment
variables (``SIGNALS_INGEST_<FIELD>``; lists and nested settings as JSON), the YAML
file given to ``signals ingest run --config``, the defaults below.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

from pipeline.build_config import FeedSource
from pipeline.dedupe import DEFAULT_NUM_PERM
from pipeline.imap import ImapConfig
from pipeline.link_settings import LinkSettings
from pipeline.settings import Paths

_paths = Paths()


class FeedSourceConfig(FeedSource):
    """An RSS/Atom feed polled over HTTP: the pipeline's own feed settings
    (``pipeline.build_config.FeedSource``: ``name``, ``url``, ``timeout_s``) and a schedule.
    Without its own ``timeout_s`` a feed gets the service's ``feed_timeout_s``."""

    interval_s: float = Field(default=300.0, gt=0)
    """Seconds between polls."""


class ImapSourceConfig(ImapConfig):
    """An IMAP mailbox polled on a schedule, read by the pipeline's IMAP reader
    (``pipeline.imap.ImapConfig``: host, security, username, ``password_env``, mailbox,
    criteria, ...; ``source`` names the items and metrics).

    Keep ``mark_seen`` off (the default): a message flagged seen before its items are
    stored would be lost to a crash in between. Messages returned again by the next
    poll are recognised by their source ids and not stored twice.
    """

    interval_s: float = Field(default=300.0, gt=0)
    """Seconds between polls."""

    lookback_days: int | None = Field(default=7, ge=1)
    """Ask only for messages that arrived in this many last days (IMAP SINCE), so a poll
    does not re-read the whole mailbox; None: no limit."""


class DriftConfig(BaseModel):
    """When online quality counts as drifting, and what happens then (``ingestion/drift.py``)."""

    model_config = ConfigDict(extra="forbid")

    window_days: float = Field(default=7.0, gt=0)
    """Window over which the rules are evaluated (by prediction time)."""

    min_labels: int = Field(default=30, ge=1)
    """Labelled predictions the window needs before precision/recall rules may fire."""

    precision_floor: float | None = Field(default=0.5, ge=0.0, le=1.0)
    """Alert when online precision falls below this (None: rule off)."""

    recall_floor: float | None = Field(default=0.5, ge=0.0, le=1.0)
    """Alert when online recall falls below this (None: rule off)."""

    max_positive_rate_shift: float | None = Field(default=0.15, gt=0.0, le=1.0)
    """Alert when the predicted-positive rate of the window differs by more than this
    (absolute) from that of the window before it (None: rule off)."""

    min_predictions: int = Field(default=50, ge=1)
    """Predictions each of the two windows needs before the rate-shift rule may fire."""

    interval_s: float = Field(default=60.0, gt=0)
    """Seconds between evaluations."""

    ray_address: str | None = None
    """Ray dashboard address (``http://head:8265``) to submit retraining jobs to when a
    precision or recall rule starts firing. None: alerts only."""

    train_config: Path = Path("train/configs/demo.yaml")
    """Training YAML given to ``signals train --config`` in the retraining job."""

    retrain_workers: int = Field(default=1, ge=1, le=64)
    """Ray Train workers of the retraining job (data-parallel, ``signals train
    --workers``); each asks for the cluster's per-worker resources."""

    retrain_window_days: float = Field(default=30.0, gt=0)
    """The labelled items of this many latest days become the retraining dataset."""

    retrain_cooldown_s: float = Field(default=86400.0, ge=0)
    """Least time between two retraining submissions (drift-triggered ones)."""

    retrain_every_days: float | None = Field(default=None, gt=0)
    """The schedule policy: also retrain every this many days (of the store's clock),
    counted from the service's start and from each submission, alerts or not. None: only
    the drift rule retrains."""

    continue_alias: str | None = None
    """An update instead of a fresh adapter: the retraining continues the version this
    registry alias names when the job starts (``init_adapter``), e.g. ``production``,
    with ``train_config: train/configs/update.yaml``; its newest ``calibration_days`` of
    labels calibrate it and are not trained on. None: a fresh LoRA on the window."""

    replay_dataset: Path | None = None
    """Dataset whose ``replay_split`` supplies ``replay_examples`` older articles added
    to every retraining window, against forgetting (None: the labelled window only)."""

    replay_split: str = "train"
    replay_examples: int = Field(default=400, ge=0)
    """Articles of ``replay_dataset`` added to a retraining window (seeded per window)."""

    calibration_days: int | None = Field(default=3, ge=1)
    """With ``continue_alias``: the newest days of labels the update calibrates on
    (``validation_days``); None leaves the train config's."""

    publish_alias: str | None = None
    """Registry alias the retraining points at its version, e.g. ``candidate``: the
    shadow alias that the promotion gate (``promotion``) then judges against production."""

    export_dir: Path = _paths.datasets_dir
    """Where retraining datasets are exported (one directory per export)."""


class PromotionConfig(BaseModel):
    """Gated promotion (``ingestion/promotion.py``): when the shadow candidate replaces
    production on the live stream's evidence, and when that is undone."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    """Judge the candidate (``shadow_adapter``) against production every ``interval_s``
    and move the aliases through the classification API's admin route."""

    min_labels: int = Field(default=200, ge=1)
    """Labelled items both versions classified, needed before any decision."""

    margin: float = Field(default=0.0, ge=0.0, le=1.0)
    """F1 the candidate must win by: the lower end of the bootstrap interval of
    F1(candidate) - F1(production) on the same labelled items must exceed it."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    """Two-sided confidence of that interval (paired bootstrap over items)."""

    bootstrap_samples: int = Field(default=2000, ge=100, le=100_000)

    max_estimated_f1_drop: float = Field(default=0.02, ge=0.0, le=1.0)
    """On the unlabelled items both classified, the candidate's estimated F1 (CBPE) may
    be at most this much below production's."""

    interval_s: float = Field(default=3600.0, gt=0)
    """Seconds between evaluations."""


class IngestConfig(BaseSettings):
    """Settings of ``signals ingest run``; each field reads ``SIGNALS_INGEST_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SIGNALS_INGEST_", extra="forbid")

    host: str = "127.0.0.1"
    """Interface the ingestion API listens on."""

    port: int = Field(default=8200, ge=1, le=65535)
    """Port of the ingestion API (push, feedback, /metrics, /health)."""

    database_url: str = f"sqlite:///{_paths.data_dir / 'ingest.db'}"
    """SQLAlchemy URL of the store: ``sqlite:///path.db`` (default, WAL) or
    ``postgresql+psycopg://user@host/db``."""

    classifier_url: str = "http://127.0.0.1:8000"
    """Base URL of the classification API."""

    adapter: str = "production"
    """Adapter (alias or version) whose predictions analysts see. Named by alias, a
    promotion takes effect without restarting ingestion. Name an alias when the
    classification API has tokens: it loads a version that is not loaded only for its
    admin token (403 ``adapter_not_loaded``; the items wait)."""

    shadow_adapter: str | None = None
    """Adapter (e.g. ``candidate``) that classifies the same items in shadow: stored
    and measured, never shown to analysts. None: no shadow."""

    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """P(signal) threshold sent with every request; None: the API's own."""

    label_shift: bool = False
    """Send the stream's estimated signal rate with each request (``signal_rate``), so
    the API prior-shifts P(signal) to it (``ingestion/label_shift.py``). The estimate is
    exported either way (``signals_ingest_estimated_signal_rate``). Off by default: on
    Reuters' validation protocol it did not raise F1 (README, "Label shift")."""

    label_shift_window: int = Field(default=500, ge=10, le=100_000)
    """Predictions per adapter version the signal rate is estimated from (the latest)."""

    label_shift_min_items: int = Field(default=200, ge=10, le=100_000)
    """Predictions of a version needed before its first estimate."""

    batch_size: int = Field(default=16, ge=1, le=64)
    """Items per classification request (the API accepts at most 64)."""

    classify_timeout_s: float = Field(default=120.0, gt=0)
    """Time allowed to one classification request."""

    retry_initial_s: float = Field(default=1.0, gt=0)
    """First wait after a failed classification request; doubled per failure."""

    retry_max_s: float = Field(default=60.0, gt=0)
    """Longest wait between classification retries."""

    classify_max_failures: int = Field(default=3, ge=1, le=100)
    """Failures of the classification API on one item alone before it leaves the queue
    (``dead_letter``, listed by ``GET /v1/dead-letters``, requeued by ``POST
    /v1/dead-letters/requeue``). When a batch gets a 5xx, its items are sent one by one:
    an item that fails alone while others (or a canary article) were answered counts
    one failure, so one item that breaks the backend cannot hold back the items after
    it. An API that fails on the canary too (an outage), refuses the token or lacks the
    adapter counts nothing: the items stay pending and are retried with back-off."""

    idle_poll_s: float = Field(default=1.0, gt=0)
    """How often the classifier loop looks for pending items when nothing woke it."""

    feeds: list[FeedSourceConfig] = []
    """RSS/Atom feeds to poll."""

    imap: list[ImapSourceConfig] = []
    """IMAP mailboxes to poll."""

    drop_dir: Path | None = None
    """Directory watched for ``.eml``, ``.mbox``, ``.jsonl`` and ``.csv`` files; a read
    file moves to ``processed/`` beside them (``failed/`` when unreadable, or with a
    ``.reason`` file when storing it kept failing). A file is read once complete: names
    starting with ``.`` are never read (write under one, or as ``NAME.part``, and
    rename), others once their size and mtime held for two scans."""

    drop_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between scans of ``drop_dir``."""

    feed_timeout_s: float = Field(default=10.0, gt=0)
    """Time allowed to one feed fetch before it counts as a timeout, for every feed that
    does not set its own ``timeout_s``."""

    dedupe_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word 5-shingles at or above which an item is a
    near copy of one already stored (see ``pipeline/dedupe.py``)."""

    dedupe_num_perm: int = Field(default=DEFAULT_NUM_PERM, ge=16, le=1024)
    """MinHash signature length; stored per item so the index survives restarts."""

    metric_windows_days: list[float] = [1.0, 7.0, 30.0]
    """Windows (days, by prediction time) of the online-quality gauges."""

    metrics_cache_s: float = Field(default=2.0, ge=0)
    """Store-derived metrics are recomputed at most this often per scrape."""

    label_priority: dict[str, int] = {"analyst": 2, "human": 2}
    """Feedback sources that outrank others when an item's label is decided; a source
    not listed has priority 1. Equal priority: the latest feedback wins."""

    label_budget_per_day: int = Field(default=200, ge=0, le=1_000_000)
    """Items the label queue (``GET /v1/label-queue``) hands out per UTC day."""

    label_random_share: float = Field(default=0.2, ge=0, le=1)
    """Share of the label queue's picks drawn at random (the rest: the most uncertain);
    the random picks give unbiased precision/recall (ingestion/label_queue.py)."""

    max_push_items: int = Field(default=500, ge=1)
    """Most items (or feedback entries) in one POST."""

    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above), checked before it is parsed."""

    write_token: str | None = None
    """Bearer token of the ``write`` scope: ``POST /v1/items``. Unset: anyone who can
    reach the port may push items (a warning is logged at start); set it in production
    (environment or Kubernetes Secret, never on a command line)."""

    feedback_token: str | None = None
    """Bearer token of the ``feedback`` scope: ``POST /v1/feedback`` (labels drive online
    precision/recall and the drift rule that submits retraining). Unset: open, with a
    warning at start. It may claim only the label sources in ``feedback_sources``."""

    feedback_sources: list[str] = ["analyst"]
    """Label sources a ``POST /v1/feedback`` entry may name unless the admin token is
    presented. Another source (``trend``, ``teacher``, ``replay``, ``human``: a ``human``
    verdict, equal in ``label_priority``, overrides an analyst's when later, and
    ``replace`` would rewrite a pipeline source's) is refused per entry, outcome ``forbidden_source``
    (403 alone; in a bulk list the other entries are still recorded), counted in
    ``signals_ingest_feedback_total`` and stored nowhere. The admin token may claim any
    source, and so may anyone while neither ``feedback_token`` nor ``admin_token`` is set
    (development): no token tells callers apart, and anyone may already claim
    ``analyst``, the top priority, so the list would guard nothing there and only refuse
    the one-machine replay loop's ``replay`` labels. Pipeline sources applied in-process
    (``Feedback.apply_label_source``, the trend rule) are not bound by it."""

    read_token: str | None = None
    """Bearer token of the ``read`` scope: ``GET /v1/items/{id}``, ``/v1/signals``,
    ``/v1/quality``, ``/v1/drift``. Unset: open."""

    admin_token: str | None = None
    """Bearer token of the ``admin`` scope, which grants every scope above."""

    classifier_token: str | None = None
    """Token sent to the classification API (its ``SIGNALS_SERVE_CLASSIFY_TOKEN``) when
    that API requires one."""

    classifier_admin_token: str | None = None
    """The classification API's admin token (its ``SIGNALS_SERVE_ADMIN_TOKEN``): the
    promotion gate moves aliases with it (``POST /v1/aliases/{alias}``)."""

    promotion: PromotionConfig = PromotionConfig()
    """Gated promotion and rollback of the shadow candidate (off by default)."""

    drift: DriftConfig = DriftConfig()
    """Drift rules and retraining (off unless ``drift.ray_address`` is set)."""

    links: LinkSettings | None = None
    """The link stage (``pipeline/links.py``): which items get their link followed and how
    politely. None: off, items are classified on their own text. On, every incoming
    batch is enriched before dedupe and storage, each item's provenance is stored,
    newsletters in the drop directory become one item per linked story and CSV/JSONL
    link lists one item per URL."""

    link_deadline_s: float = Field(default=30.0, gt=0)
    """Longest wait for the link stage per incoming batch: items whose page is not read
    by then are stored with their own text and ``fetch_status="deadline"``, so a slow
    or hostile site never stalls intake or classification."""

    link_max_attempts: int = Field(default=5, ge=1, le=100)
    """Fetches of a link-only item's page (the first at intake included) before it is
    ``skipped``: an item with no text of its own is not classified until its page is
    read; it waits (``awaiting_link``) and is retried every ``link_retry_interval_s``.
    A failure no retry can mend (robots.txt, a refused address, not HTML, no article
    text, a 4xx) skips it at once. Skips are logged and counted
    (``signals_ingest_link_waits_total{outcome="skipped"}``)."""

    link_retry_interval_s: float = Field(default=300.0, gt=0)
    """Seconds between retries of the link-only items still waiting for their page."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        """Highest first: arguments (flags), ``SIGNALS_INGEST_*`` variables, the YAML
        file being loaded (:func:`load_ingest_config`), the defaults."""
        sources = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @field_validator("metric_windows_days")
    @classmethod
    def _windows_positive(cls, value: list[float]) -> list[float]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("metric_windows_days needs at least one window, all > 0 days")
        return sorted(set(value))

    @model_validator(mode="after")
    def _feed_timeouts(self) -> IngestConfig:
        for feed in self.feeds:
            if "timeout_s" not in feed.model_fields_set:
                feed.timeout_s = self.feed_timeout_s
        return self


_config_file: ContextVar[Path | None] = ContextVar("ingest_config_file", default=None)
"""The YAML file :func:`load_ingest_config` is reading (a settings source of its own)."""


def load_ingest_config(path: Path | None = None, **overrides: Any) -> IngestConfig:
    """The config from ``path`` (YAML), then environment variables, then ``overrides``
    (command-line flags; None means not given). Precedence is pydantic-settings' own
    source order, see :meth:`IngestConfig.settings_customise_sources`."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ingestion config {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    token = _config_file.set(path)
    try:
        return IngestConfig(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)
