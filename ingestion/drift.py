"""Drift: rules over online quality that raise alerts and can trigger retraining.

Three rules, evaluated per adapter version and role over the last ``window_days`` of
predictions (``DriftConfig`` in ``ingestion/config.py``):

* ``precision_floor``: precision below the floor, once the window has ``min_labels``
  labelled predictions;
* ``recall_floor``: recall below the floor, same condition;
* ``positive_rate_shift``: the predicted-positive rate differs from that of the window
  before by more than ``max_positive_rate_shift``, both windows holding
  ``min_predictions`` predictions (a shift in the traffic or in the model, seen before
  any label arrives).

Alerts are exported as ``signals_ingest_drift_alert{adapter,role,rule}`` (1 firing,
0 evaluated and fine).

Retraining (the update policies): when a precision or recall rule starts firing for the
primary adapter (the drift policy, at most once per ``retrain_cooldown_s``), and every
``retrain_every_days`` whatever the rules say (the schedule policy), the labelled items
of the latest ``retrain_window_days`` are exported as a dataset, after
``replay_examples`` older articles of ``replay_dataset`` (against forgetting), and
``signals train`` is submitted on them as a Ray job when a Ray address is configured.
With ``continue_alias`` the job continues the version that alias names (an update,
calibrated on the newest ``calibration_days`` of labels it does not train on); with
``publish_alias`` it points that alias (the promotion gate's candidate) at its version.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from pipeline.dataset import labelled_sample, load_split
from ingestion.config import DriftConfig
from ingestion.online_metrics import quality_from_confusion
from ingestion.export import export_dataset
from ingestion.schema import utcnow
from ingestion.store import Store

log = logging.getLogger(__name__)

RULES = ("precision_floor", "recall_floor", "positive_rate_shift")
RETRAIN_RULES = frozenset({"precision_floor", "recall_floor"})


@dataclass(frozen=True)
class RuleResult:
    """One rule evaluated for one adapter version and role."""

    adapter: str
    role: str
    rule: str
    firing: bool
    value: float
    """The measured value: precision, recall, or the current predicted-positive rate."""
    limit: float
    """The floor, or the previous window's rate for the shift rule."""
    support: int
    """Labelled predictions (floors) or predictions in the current window (shift)."""


def evaluate_rules(store: Store, config: DriftConfig,
                   now: datetime | None = None) -> list[RuleResult]:
    """Every rule that has enough data, for every adapter version and role."""
    now = now or utcnow()
    window = timedelta(days=config.window_days)
    current = quality_from_confusion(store.confusion(since=now - window))
    previous = quality_from_confusion(store.confusion(since=now - 2 * window, until=now - window))
    results = []
    for (adapter, role), stats in sorted(current.items()):
        labelled_enough = stats.labelled >= config.min_labels
        if config.precision_floor is not None and labelled_enough and stats.precision is not None:
            results.append(RuleResult(adapter, role, "precision_floor",
                                      stats.precision < config.precision_floor,
                                      stats.precision, config.precision_floor, stats.labelled))
        if config.recall_floor is not None and labelled_enough and stats.recall is not None:
            results.append(RuleResult(adapter, role, "recall_floor",
                                      stats.recall < config.recall_floor,
                                      stats.recall, config.recall_floor, stats.labelled))
        before = previous.get((adapter, role))
        if (config.max_positive_rate_shift is not None and before is not None
                and stats.predictions >= config.min_predictions
                and before.predictions >= config.min_predictions):
            rate, baseline = stats.predicted_positive_rate, before.predicted_positive_rate
            results.append(RuleResult(adapter, role, "positive_rate_shift",
                                      abs(rate - baseline) > config.max_positive_rate_shift,
                                      rate, baseline, stats.predictions))
    return results


def train_arguments(train_config: Path, sets: Sequence[str], workers: int = 1) -> list[str]:
    """``signals train`` arguments (after the program name): the config, the Ray Train
    workers, and each ``field=value`` as a ``--set``."""
    arguments = ["train", "--config", str(train_config),
                 *(["--workers", str(workers)] if workers > 1 else [])]
    for field in sets:
        arguments += ["--set", field]
    return arguments


def update_sets(init_adapter: str | None, calibration_days: int | None,
                publish_alias: str | None = None) -> list[str]:
    """The ``--set`` fields that make a retraining an update of ``init_adapter`` (a
    version or alias), calibrated on its newest ``calibration_days``, that points
    ``publish_alias`` at its version: the service's retraining and the backtest's."""
    sets = []
    if init_adapter:
        sets.append(f"init_adapter={init_adapter}")
        if calibration_days is not None:
            sets.append(f"validation_days={calibration_days}")
    if publish_alias:
        sets.append(f"publish_alias={publish_alias}")
    return sets


def retrain_entrypoint(train_config: Path, dataset_dir: Path, split: str,
                       workers: int = 1, sets: Sequence[str] = ()) -> str:
    """The shell command the retraining Ray job runs."""
    return shlex.join(["signals", *train_arguments(
        train_config, [f"dataset={dataset_dir}", f"split={split}", *sets], workers)])


def submit_ray_job(address: str, entrypoint: str, submission_id: str) -> str:
    """Submit ``entrypoint`` as a Ray job (needs ``ray[default]``); the job's id."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).submit_job(entrypoint=entrypoint,
                                                   submission_id=submission_id)


@dataclass(frozen=True)
class RetrainRequest:
    """What a drift alert submitted (or would submit without a Ray address)."""

    dataset_dir: Path
    split: str
    entrypoint: str
    items: int
    """Labelled items of the window."""
    job_id: str | None
    trigger: str = "drift"
    """What asked for it: ``drift`` (a quality alert) or ``schedule``."""
    replayed: int = 0
    """Older articles of ``replay_dataset`` added to the window."""


class DriftMonitor(Collector):
    """Evaluates the rules, keeps which alerts fire, exports them, triggers retraining."""

    def __init__(self, store: Store, config: DriftConfig, registry: CollectorRegistry):
        self.store = store
        self.config = config
        self.results: list[RuleResult] = []
        self.retrains: list[RetrainRequest] = []
        self._firing: set[tuple[str, str, str]] = set()
        self._last_submit = float("-inf")
        self._next_scheduled: datetime | None = None  # set by the first check
        self._lock = threading.Lock()
        self.alerts_started = Counter(
            "signals_ingest_drift_alerts", "Drift alerts that started firing, by rule",
            ["rule"], registry=registry)
        self.retrain_jobs = Counter(
            "signals_ingest_retrain_jobs", "Retraining submissions by outcome "
            "(submitted, failed: the submission or the replay dataset, exported_only: no Ray "
            "address, empty: no labelled items)",
            ["outcome"], registry=registry)
        registry.register(self)

    def check(self, now: datetime | None = None) -> list[RuleResult]:
        """Evaluate every rule now; start retraining for newly firing quality alerts."""
        with self._lock:
            results = evaluate_rules(self.store, self.config, now)
            firing = {(r.adapter, r.role, r.rule) for r in results if r.firing}
            for adapter, role, rule in sorted(firing - self._firing):
                log.warning("drift alert: %s for adapter %s (%s): %s", rule, adapter, role,
                            next(asdict(r) for r in results
                                 if (r.adapter, r.role, r.rule) == (adapter, role, rule)))
                self.alerts_started.labels(rule).inc()
            newly = firing - self._firing
            self._firing, self.results = firing, results
            now = now or utcnow()
            if any(role == "primary" and rule in RETRAIN_RULES for _, role, rule in newly):
                self._maybe_retrain(now)
            elif self._schedule_due(now):
                self._retrain(now, "schedule")
            return results

    def _schedule_due(self, now: datetime) -> bool:
        """The schedule policy: ``retrain_every_days`` since the start or the last
        submission (kept in memory: a restarted service counts from its start)."""
        if self.config.retrain_every_days is None:
            return False
        if self._next_scheduled is None:
            self._next_scheduled = now + timedelta(days=self.config.retrain_every_days)
        return now >= self._next_scheduled

    def _maybe_retrain(self, now: datetime) -> RetrainRequest | None:
        if time.monotonic() - self._last_submit < self.config.retrain_cooldown_s:
            log.info("drift: retraining skipped, last submission is within the cooldown")
            return None
        return self._retrain(now, "drift")

    def _retrain(self, now: datetime, trigger: str) -> RetrainRequest | None:
        if self.config.retrain_every_days is not None:  # a drift retraining resets it too
            self._next_scheduled = now + timedelta(days=self.config.retrain_every_days)
        request = self.export_retraining_window(now, trigger)
        if request is None:
            return None
        self._last_submit = time.monotonic()
        if self.config.ray_address is None:
            self.retrain_jobs.labels("exported_only").inc()
            log.warning("drift: dataset exported to %s; no Ray address configured, run: %s",
                        request.dataset_dir, request.entrypoint)
            return request
        try:
            job_id = submit_ray_job(self.config.ray_address, request.entrypoint,
                                    submission_id=f"retrain-{request.split}")
        except Exception as error:  # a Ray outage must not stop the ingestion service
            self.retrain_jobs.labels("failed").inc()
            log.error("drift: retraining submission to %s failed: %s",
                      self.config.ray_address, error)
            return request
        self.retrain_jobs.labels("submitted").inc()
        request = replace(request, job_id=job_id)
        self.retrains[-1] = request
        log.warning("drift: retraining job %s submitted (%s): %s", job_id, trigger,
                    request.entrypoint)
        return request

    def export_retraining_window(self, now: datetime,
                                 trigger: str = "drift") -> RetrainRequest | None:
        """Export the latest window's labelled items (after the replay sample); the job
        that would train on them."""
        config = self.config
        since = now - timedelta(days=config.retrain_window_days)
        split = f"window-{since:%Y%m%dT%H%M}-{now:%Y%m%dT%H%M}"
        directory = Path(config.export_dir) / f"ingest-{split}"
        replay = []
        if config.replay_dataset is not None and config.replay_examples:
            try:
                older = load_split(config.replay_dataset, config.replay_split)
            except (OSError, ValueError) as error:  # a retraining without it would forget
                self.retrain_jobs.labels("failed").inc()
                log.error("drift: no retraining: the replay split %s of %s is unreadable: %s",
                          config.replay_split, config.replay_dataset, error)
                return None
            replay = labelled_sample(older, config.replay_examples, seed=split)
        manifest = export_dataset(self.store, directory, since=since, until=now,
                                  split_name=split, replay=replay)
        labelled = manifest.splits[split].count - len(replay)
        if not labelled:
            self.retrain_jobs.labels("empty").inc()
            log.warning("drift: no labelled items in %s; nothing to retrain on", split)
            return None
        entrypoint = retrain_entrypoint(config.train_config, directory.resolve(), split,
                                        config.retrain_workers,
                                        update_sets(config.continue_alias,
                                                    config.calibration_days,
                                                    config.publish_alias))
        request = RetrainRequest(directory.resolve(), split, entrypoint, labelled, None,
                                 trigger, len(replay))
        self.retrains.append(request)
        return request

    def collect(self):
        gauge = GaugeMetricFamily(
            "signals_ingest_drift_alert",
            "1 while a drift rule fires for an adapter version and role, 0 when evaluated "
            "and fine", labels=["adapter", "role", "rule"])
        for result in self.results:
            gauge.add_metric([result.adapter, result.role, result.rule], float(result.firing))
        yield gauge
        value = GaugeMetricFamily(
            "signals_ingest_drift_value",
            "The value each drift rule compared: precision, recall or predicted-positive "
            "rate over the drift window", labels=["adapter", "role", "rule"])
        for result in self.results:
            value.add_metric([result.adapter, result.role, result.rule], result.value)
        yield value
