"""The backtest: what an update policy would have given over a dated, labelled dataset.

``signals backtest`` answers "had I run the product through April and June with weekly
updates and 200 labels a week, what would its precision and recall have been, and what
would a frozen adapter have given?". It replays the test windows of a dataset day by day
on a simulated clock through the product's own parts, once per **update policy**:

* ``never`` (frozen): the start adapter serves every day;
* ``schedule``: a retraining every ``every_days`` days of publication time;
* ``drift``: a retraining when the F1 estimated from the label queue's random picks
  over the last ``window_days`` falls below ``f1_floor``.

Each policy has its own ingestion service (:class:`~ingestion.service.IngestionService`,
its own SQLite store stamped by the simulated clock) and its own two registry aliases,
``<policy>-production`` and ``<policy>-candidate``, on one running classification API
(``signals serve``: vLLM or in-process, with an admin token). A simulated day:

1. the day's articles arrive (without their labels) and are deduplicated and stored;
2. they are classified through the API by the production alias, and by the candidate
   alias in shadow while it names another version;
3. the label queue hands out the day's budget (``label_budget_per_day``, a
   ``label_random_share`` of it drawn at random);
4. the labels of the hand-outs of ``label_delay_days`` ago arrive (0: today's), as an
   analyst's verdicts (source ``analyst``), from the dataset's ``signal``;
5. the promotion gate (:mod:`ingestion.promotion`) judges the candidate on the items both
   versions classified and promotes it, keeps it in shadow or rolls a promotion back,
   moving the aliases through the API's admin route;
6. the policy may retrain: ``signals train`` continues the production adapter
   (``init_adapter``) on every label received so far plus ``replay_examples`` articles
   of the training split (against forgetting), calibrated on the newest
   ``calibration_days`` of labels, which it does not train on (``validation_days``); it
   runs as a Ray job (``ray_address``), or as ``signals train`` here (a local Ray, or in
   this process with ``local``); the new version becomes the candidate.

Beside each policy, the tuned lexical reference (:func:`classify.lexical.select_lexical`)
is scored on the same items: frozen (fitted on the training split), and for a retraining
policy refitted at each of its retrainings on the training split plus the same labels,
calibrated on the same newest days.

The report (``backtest.json``, ``f1-by-week.png``) gives per policy and simulated week
the **true** precision/recall/F1 of what was served (from the dataset's labels, which
the services never see), the F1 **measured** from the queue's random picks (weighted by
their inclusion probabilities, :func:`ingestion.label_queue.sampled_quality`) and
**estimated** from P(signal) on the unlabelled items (CBPE), the labels handed out and
received, retrainings, promotions, rollbacks, and the compute spent (classification and
training wall time). ``state.json`` is written after every simulated day and after every
retraining: a run cut short resumes where it stopped (items already stored are
duplicates, classification is exactly-once, the day's label budget is stored).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date, datetime, time as day_time, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from ingestion.config import IngestConfig, PromotionConfig
from ingestion.drift import submit_ray_job, train_arguments, update_sets
from ingestion.export import export_dataset
from ingestion.feedback import FeedbackEntry
from ingestion.label_queue import LabelQueue, sampled_quality
from ingestion.online_metrics import ExpectedConfusion, rates_from_counts
from ingestion.service import IngestionService
from ingestion.store import Store
from pipeline.article import Article
from pipeline.dataset import labelled_sample, load_split, publication_day
from pipeline.settings import Paths
from serve.schemas import ALIAS_REGEX, AliasRequest
from classify.lexical import LexicalModel, select_lexical
from classify.registry import AdapterRegistry

log = logging.getLogger(__name__)

_paths = Paths()

SOURCE = "backtest"
"""The ingestion source the replayed articles are stored under."""

LABEL_SOURCE = "analyst"
"""The label source the delayed verdicts are recorded as."""


class UpdatePolicy(BaseModel):
    """When a policy retrains (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ALIAS_REGEX, max_length=40)
    """Names the policy's aliases (``<name>-production``, ``<name>-candidate``) and files."""

    trigger: Literal["never", "schedule", "drift"]

    every_days: float = Field(default=7.0, gt=0)
    """``schedule``: days of publication time between two retrainings."""

    f1_floor: float = Field(default=0.85, ge=0.0, le=1.0)
    """``drift``: retrain when the F1 measured on the queue's random picks of the last
    ``window_days`` is below this. (Not the service's precision/recall floors: those read
    every label, and most queue labels are the uncertain items, whose precision is low
    by construction.)"""

    window_days: float = Field(default=7.0, gt=0)
    """``drift``: the window of random picks the F1 is measured on."""

    min_random_labels: int = Field(default=20, ge=1)
    """``drift``: labelled random picks in the window needed before the rule is read."""

    cooldown_days: float = Field(default=7.0, ge=0)
    """``drift``: least days between two retrainings."""

    min_new_labels: int = Field(default=50, ge=1)
    """Labels received since the last retraining (or the start) needed to retrain."""


DEFAULT_POLICIES = [UpdatePolicy(name="frozen", trigger="never"),
                    UpdatePolicy(name="scheduled", trigger="schedule"),
                    UpdatePolicy(name="drift", trigger="drift")]


class RetrainSettings(BaseModel):
    """How a retraining runs (every policy the same)."""

    model_config = ConfigDict(extra="forbid")

    train_config: Path = Path(__file__).resolve().parent.parent / "train/configs/update.yaml"
    """The recipe given to ``signals train --config``; ``dataset``, ``split``,
    ``init_adapter``, ``validation_days`` and ``registry`` are set by the backtest."""

    overrides: list[str] = []
    """More ``FIELD=VALUE`` for ``signals train --set`` (e.g. ``max_steps=40``)."""

    replay_examples: int = Field(default=400, ge=0)
    """Articles of the training split drawn at random (seeded) into every retraining."""

    calibration_days: int = Field(default=3, ge=1)
    """The newest days of labels: the calibration window, never trained on."""

    ray_address: str | None = None
    """Ray dashboard address (``http://head:8265``): submit ``signals train`` there as a
    Ray job. None: run ``signals train`` here (it starts a local Ray)."""

    local: bool = False
    """Without ``ray_address``: ``signals train --local`` (no Ray; quick runs, tests)."""

    timeout_s: float = Field(default=4 * 3600.0, gt=0)


class BacktestConfig(BaseModel):
    """Settings of ``signals backtest`` (YAML via ``--config``; flags override)."""

    model_config = ConfigDict(extra="forbid")

    dataset: Path = _paths.datasets_dir / "reuters-acq"
    splits: list[str] = ["1987-04", "1987-06"]
    """The test windows replayed, in this order (the training window is the start)."""

    train_split: str = "train"
    """The training window: replay examples and the lexical reference come from it."""

    lexical_validation_days: int = Field(default=5, ge=1)
    """The frozen lexical reference is tuned on the last days of ``train_split``."""

    registry: Path = _paths.registry_dir
    """The registry the classification API serves (retrainings publish into it)."""

    classifier_url: str = "http://127.0.0.1:8000"
    classifier_token: str | None = Field(
        default_factory=lambda: os.environ.get("SIGNALS_SERVE_API_TOKEN"))
    classifier_admin_token: str | None = Field(
        default_factory=lambda: os.environ.get("SIGNALS_SERVE_ADMIN_TOKEN"))
    """The API's admin token: aliases move through ``POST /v1/aliases``."""

    start_adapter: str = "production"
    """Registry version or alias every policy starts from (a model of the training window)."""

    label_budget_per_day: int = Field(default=30, ge=0)
    """Labels the queue hands out per simulated day (30: ~200 a week)."""

    label_random_share: float = Field(default=0.3, ge=0.0, le=1.0)
    label_delay_days: float = Field(default=2.0, ge=0.0)
    """Days from a hand-out to its label."""

    policies: list[UpdatePolicy] = DEFAULT_POLICIES
    retrain: RetrainSettings = RetrainSettings()
    promotion: PromotionConfig = PromotionConfig(enabled=True, min_labels=60)
    """The gate (``min_labels`` 60: about two days of the default budget)."""

    batch_size: int = Field(default=32, ge=1)
    """Articles per classification request."""

    seed: int = 0
    max_days: int | None = Field(default=None, ge=1)
    """Replay at most this many calendar days (a short run; resume continues it)."""


class SimulatedClock:
    """The time the services stamp: set by the backtest, one simulated day at a time."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def end_of(day: date) -> datetime:
    """The last second of ``day`` (UTC): a simulated day's work happens at its end."""
    return datetime.combine(day, day_time(23, 59, 59), tzinfo=timezone.utc)


def true_quality(predicted: list[int], actual: list[int]) -> dict[str, Any]:
    tp = sum(p == 1 and a == 1 for p, a in zip(predicted, actual))
    fp = sum(p == 1 and a == 0 for p, a in zip(predicted, actual))
    fn = sum(p == 0 and a == 1 for p, a in zip(predicted, actual))
    return {"n": len(predicted), "signals": sum(actual), **rates_from_counts(tp, fp, fn)}


def retraining_due(policy: UpdatePolicy, day: date, first_day: date, store: Store,
                   state: dict[str, Any], labels: int) -> bool:
    """Whether ``policy`` retrains at the end of ``day`` (``labels``: received so far;
    ``state``: the policy's, with its last retraining)."""
    if policy.trigger == "never" or labels - state["labels_at_last_retrain"] < policy.min_new_labels:
        return False
    last = state["last_retrain_day"]
    since_last = (day - (date.fromisoformat(last) if last else first_day)).days
    if policy.trigger == "schedule":
        return since_last >= policy.every_days
    if last is not None and since_last < policy.cooldown_days:
        return False
    window_start = store.clock() - timedelta(days=policy.window_days)
    recent = [r for r in store.label_requests_list(open_only=False)
              if datetime.fromisoformat(r["requested_at"]) >= window_start]
    measured = sampled_quality(recent)
    firing = (measured["labelled_random_picks"] >= policy.min_random_labels
              and measured["f1"] is not None and measured["f1"] < policy.f1_floor)
    if firing:
        log.warning("backtest %s %s: drift, F1 %.3f on %d random picks < %.3f", policy.name,
                    day, measured["f1"], measured["labelled_random_picks"], policy.f1_floor)
    return firing


class StateFile:
    """``state.json``: per policy, the last simulated day done and what happened."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = (json.loads(path.read_text()) if path.is_file()
                                     else {"policies": {}})

    def policy(self, name: str) -> dict[str, Any]:
        return self.data["policies"].setdefault(name, {
            "done": None, "retrains": [], "lexical_refits": [], "classify_s": 0.0,
            "last_retrain_day": None, "labels_at_last_retrain": 0})

    def save(self) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.data, indent=1, default=str))
        staging.replace(self.path)


class Backtest:
    """One backtest run in ``out`` (see the module docstring)."""

    def __init__(self, config: BacktestConfig, out: Path):
        self.config, self.out = config, out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config.model_dump_json(indent=1))
        self.state = StateFile(out / "state.json")
        self.registry = AdapterRegistry(config.registry)
        self.train_articles = [a for a in load_split(config.dataset, config.train_split)
                               if a.signal is not None and a.date_published is not None]
        self.articles: list[Article] = []
        self.split_of: dict[str, str] = {}
        for split in config.splits:
            for article in load_split(config.dataset, split):
                if article.signal is None or article.date_published is None:
                    continue
                self.articles.append(article)
                self.split_of[str(article.id)] = split
        if not self.articles:
            raise ValueError(f"backtest: no dated, labelled article in {config.splits} "
                             f"of {config.dataset}")
        self.truth = {str(a.id): int(a.signal) for a in self.articles}
        self.by_day: dict[date, list[Article]] = defaultdict(list)
        for article in self.articles:
            self.by_day[publication_day(article)].append(article)
        first, last = min(self.by_day), max(self.by_day)
        self.days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        if config.max_days is not None:
            self.days = self.days[:config.max_days]
        self.start_version = self.registry.resolve(config.start_adapter).name

    # --- the lexical reference ---------------------------------------------------------

    def frozen_lexical(self) -> LexicalModel:
        path = self.out / "lexical" / "frozen.joblib"
        if not path.is_file():
            log.info("backtest: tuning the lexical reference on the training window")
            path.parent.mkdir(exist_ok=True)
            select_lexical(self.train_articles, self.config.lexical_validation_days,
                           dataset=self.config.dataset.name,
                           split=self.config.train_split).model.save(path)
        return LexicalModel.load(path)

    def refit_lexical(self, policy: str, n: int, labelled: list[Article],
                      frozen: LexicalModel) -> str:
        path = self.out / "lexical" / f"{policy}-{n}.joblib"
        select_lexical(self.train_articles + labelled, self.config.retrain.calibration_days,
                       grid=[frozen.params], dataset="backtest",
                       split=f"{policy}-{n}").model.save(path)
        return str(path)

    # --- one policy's replay -------------------------------------------------------------

    def ingest_config(self, policy: UpdatePolicy) -> IngestConfig:
        retrains = policy.trigger != "never"
        return IngestConfig(
            database_url=f"sqlite:///{self.out / f'{policy.name}.sqlite'}",
            classifier_url=self.config.classifier_url,
            classifier_token=self.config.classifier_token,
            classifier_admin_token=self.config.classifier_admin_token,
            adapter=f"{policy.name}-production",
            shadow_adapter=f"{policy.name}-candidate" if retrains else None,
            batch_size=self.config.batch_size, label_budget_per_day=self.config.label_budget_per_day,
            label_random_share=self.config.label_random_share,
            promotion=self.config.promotion.model_copy(update={"enabled": retrains}))

    def _api(self) -> httpx.Client:
        token = self.config.classifier_admin_token
        return httpx.Client(base_url=self.config.classifier_url, timeout=600,
                            headers={"Authorization": f"Bearer {token}"} if token else None)

    def _unreachable(self, error: httpx.TransportError) -> RuntimeError:
        return RuntimeError(
            f"the classification API at {self.config.classifier_url} is unreachable "
            f"({type(error).__name__}: {error}); start `signals serve` with "
            "SIGNALS_SERVE_ADMIN_TOKEN set, or give --classifier-url")

    def aliases(self) -> dict[str, str]:
        try:
            with self._api() as api:
                response = api.get("/v1/adapters")
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        if response.status_code != 200:
            raise RuntimeError(f"the classification API answered GET /v1/adapters with "
                               f"{response.status_code}: {response.text[:300]}")
        return response.json()["aliases"]

    def point(self, alias: str, version: str) -> None:
        try:
            with self._api() as api:
                response = api.post(f"/v1/aliases/{alias}",
                                    json=AliasRequest(adapter=version).model_dump())
        except httpx.TransportError as error:
            raise self._unreachable(error) from error
        if response.status_code != 200:
            raise RuntimeError(f"the classification API refused to point {alias} at {version} "
                               f"({response.status_code}): {response.text[:300]}")

    def run(self) -> dict[str, Any]:
        self.aliases()  # the API answers before anything long starts
        frozen = self.frozen_lexical()
        for policy in self.config.policies:
            asyncio.run(self.replay(policy, frozen))
        return self.report(frozen)

    async def replay(self, policy: UpdatePolicy, frozen: LexicalModel) -> None:
        state = self.state.policy(policy.name)
        production_alias, candidate_alias = f"{policy.name}-production", f"{policy.name}-candidate"
        # A fresh run starts every policy from the start version, whatever its aliases
        # name from an earlier run on the same registry.
        if state["done"] is None and not state["retrains"]:
            self.point(production_alias, self.start_version)
            if policy.trigger != "never":
                self.point(candidate_alias, self.start_version)
        clock = SimulatedClock(end_of(self.days[0]))
        config = self.ingest_config(policy)
        service = IngestionService(config, Store(config.database_url, config.label_priority,
                                                 clock=clock))
        queue = LabelQueue(service.store, config.label_budget_per_day, config.label_random_share,
                           rng=random.Random(f"{self.config.seed}-{policy.name}"))
        service.classify.client = httpx.AsyncClient(base_url=config.classifier_url,
                                                    timeout=config.classify_timeout_s)
        try:
            for day in self.days:
                if state["done"] is not None and day <= date.fromisoformat(state["done"]):
                    continue
                clock.now = end_of(day)
                await self.simulate_day(policy, day, service, queue, state, frozen)
                state["done"] = day.isoformat()
                self.state.save()
        finally:
            await service.classify.client.aclose()
            service.store.close()

    async def simulate_day(self, policy: UpdatePolicy, day: date, service: IngestionService,
                           queue: LabelQueue, state: dict[str, Any],
                           frozen: LexicalModel) -> None:
        now = service.store.clock()
        aliases = self.aliases()
        production = aliases[service.config.adapter]
        candidate = aliases.get(service.config.shadow_adapter or "")
        # The candidate classifies the live stream in shadow while it is another version.
        service.intake.shadow = candidate is not None and candidate != production
        arrivals = [a.model_copy(update={"signal": None}) for a in self.by_day.get(day, [])]
        answers = service.accept(arrivals, SOURCE) if arrivals else []
        started = time.monotonic()
        for role in ("primary", "shadow"):
            while await service.classify_pending(role):
                pass
        state["classify_s"] += time.monotonic() - started
        handed = queue.hand_out(limit=1_000_000, now=now)["budget"]["used_today"]
        received = self.deliver_labels(service, now)
        labels = len(service.store.labelled_items())
        log.info("backtest %s %s: %d articles (%d stored), %d handed out, %d labels arrived, "
                 "%d labels so far; production %s", policy.name, day, len(arrivals),
                 sum(a.status == "accepted" for a in answers), handed, received, labels,
                 production)
        # The gate judges the candidate on the evidence so far before a retraining
        # replaces it.
        if service.promotion is not None:
            decision = await service.promotion.evaluate(now=now)
            if decision is not None and decision["decision"] != "keep":
                log.info("backtest %s %s: gate %s", policy.name, day, decision["decision"])
        if retraining_due(policy, day, self.days[0], service.store, state, labels):
            production = self.aliases()[service.config.adapter]
            version = self.retrain_candidate(policy, day, service, state, production, frozen)
            self.point(service.config.shadow_adapter, version)

    def deliver_labels(self, service: IngestionService, now: datetime) -> int:
        """The verdicts on the hand-outs of ``label_delay_days`` ago and earlier."""
        due = now - timedelta(days=self.config.label_delay_days)
        received = 0
        for request in service.store.label_requests_list(open_only=True):
            if datetime.fromisoformat(request["requested_at"]) > due:
                break  # oldest first
            item = service.store.get_item(request["item_id"])
            entry = FeedbackEntry(item_id=request["item_id"], source=LABEL_SOURCE,
                                  label=self.truth[item["external_id"]])
            received += service.feedback.record(entry)["outcome"] == "recorded"
        return received

    # --- retraining ------------------------------------------------------------------------

    def retrain_candidate(self, policy: UpdatePolicy, day: date, service: IngestionService,
                          state: dict[str, Any], production: str,
                          frozen: LexicalModel) -> str:
        """Continue ``production`` on every label so far plus the replay sample; publish;
        refit the lexical reference on the same labels. Returns the new version."""
        n = len(state["retrains"]) + 1
        replay = labelled_sample(self.train_articles, self.config.retrain.replay_examples,
                                 seed=f"{self.config.seed}-{policy.name}-{n}")
        directory = self.out / "datasets" / f"{policy.name}-{n}"
        # What the service's own retraining exports: every label so far, after the replay.
        export_dataset(service.store, directory, split_name="retrain", replay=replay)
        replayed = {article.id for article in replay}
        labelled = [a for a in load_split(directory, "retrain") if a.id not in replayed]
        started = time.monotonic()
        version = self.train(directory, production)
        seconds = time.monotonic() - started
        state["retrains"].append({"day": day.isoformat(), "version": version, "from": production,
                                  "labels": len(labelled), "replay": len(replay),
                                  "train_s": round(seconds, 1)})
        state["last_retrain_day"] = day.isoformat()
        state["labels_at_last_retrain"] = len(labelled)
        self.state.save()
        state["lexical_refits"].append({"day": day.isoformat(), "path": self.refit_lexical(
            policy.name, n, labelled, frozen)})
        self.state.save()
        log.warning("backtest %s %s: retrained %s -> %s on %d labels + %d replayed (%.0f s)",
                    policy.name, day, production, version, len(labelled), len(replay), seconds)
        return version

    def train_command(self, dataset: Path, production: str) -> list[str]:
        settings = self.config.retrain
        command = train_arguments(settings.train_config, [
            f"dataset={dataset}", "split=retrain",
            *update_sets(production, settings.calibration_days),
            f"registry={self.config.registry}", *settings.overrides])
        return command + (["--local"] if settings.local and not settings.ray_address else [])

    def train(self, dataset: Path, production: str) -> str:
        """Run ``signals train`` and return the version it published."""
        before = {v.name for v in self.registry.list()}
        settings = self.config.retrain
        command = self.train_command(dataset, production)
        if settings.ray_address:
            from ray.job_submission import JobStatus, JobSubmissionClient

            client = JobSubmissionClient(settings.ray_address)
            job = submit_ray_job(settings.ray_address, shlex.join(["signals", *command]),
                                 submission_id=f"backtest-{dataset.name}-{int(time.time())}")
            deadline = time.monotonic() + settings.timeout_s
            while (status := client.get_job_status(job)) not in (
                    JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                if time.monotonic() > deadline:
                    client.stop_job(job)
                    raise TimeoutError(f"retraining job {job} ran past {settings.timeout_s} s")
                time.sleep(5)
            if status != JobStatus.SUCCEEDED:
                raise RuntimeError(f"retraining job {job} {status}: "
                                   f"{client.get_job_logs(job)[-2000:]}")
        else:
            subprocess.run([sys.executable, "-m", "signals", *command], check=True,
                           timeout=settings.timeout_s)
        new = [v for v in self.registry.list() if v.name not in before]
        if len(new) != 1:
            raise RuntimeError(f"the retraining published {len(new)} versions, not one: "
                               f"{[v.name for v in new]}")
        return new[0].name

    # --- the report ---------------------------------------------------------------------------

    def week_of(self, day: date) -> int:
        return (day - self.days[0]).days // 7

    def report(self, frozen: LexicalModel) -> dict[str, Any]:
        by_id = {str(a.id): a for a in self.articles}
        policies: dict[str, Any] = {}
        for policy in self.config.policies:
            path = self.out / f"{policy.name}.sqlite"
            if not path.is_file():
                continue
            store = Store(f"sqlite:///{path}")
            try:
                policies[policy.name] = self.policy_report(policy, store, by_id, frozen)
            finally:
                store.close()
        report = {"config": json.loads(self.config.model_dump_json()),
                  "days": [self.days[0].isoformat(), self.days[-1].isoformat()],
                  "start_adapter": self.start_version,
                  "lexical_reference": frozen.params.label, "policies": policies}
        (self.out / "backtest.json").write_text(json.dumps(report, indent=1))
        plot(report, self.out / "f1-by-week.png")
        return report

    def policy_report(self, policy: UpdatePolicy, store: Store, by_id: dict[str, Article],
                      frozen: LexicalModel) -> dict[str, Any]:
        state = self.state.policy(policy.name)
        rows = [r for r in store.prediction_rows("primary") if r["external_id"] in self.truth]
        refits = [(date.fromisoformat(r["day"]), LexicalModel.load(Path(r["path"])))
                  for r in state["lexical_refits"]]
        lexical_p: dict[str, dict[str, float]] = {"frozen": {}, "refitted": {}}
        lexical_t = {"frozen": {}, "refitted": {}}
        articles = [by_id[r["external_id"]] for r in rows]
        for article, p in zip(articles, frozen.p_signal(articles)):
            lexical_p["frozen"][str(article.id)] = p
            lexical_t["frozen"][str(article.id)] = frozen.calibration.threshold
        for article in articles:
            day = publication_day(article)
            model = next((m for d, m in reversed(refits) if d < day), frozen)
            lexical_p["refitted"][str(article.id)] = model.p_signal([article])[0]
            lexical_t["refitted"][str(article.id)] = model.calibration.threshold
        requests = store.label_requests_list(open_only=False)
        decisions = store.promotion_decisions(limit=100_000)
        weeks: dict[int, dict[str, Any]] = {}
        for week in sorted({self.week_of(publication_day(a)) for a in articles}):
            members = [(r, a) for r, a in zip(rows, articles)
                       if self.week_of(publication_day(a)) == week]
            first = self.days[0] + timedelta(days=7 * week)
            in_week = [q for q in requests if self.week_of(
                datetime.fromisoformat(q["requested_at"]).date()) == week]
            unlabelled = ExpectedConfusion()
            for r, _ in members:
                if r["actual"] is None:
                    unlabelled.add(r["label"], 1, r["p_signal"])
            actual = [self.truth[r["external_id"]] for r, _ in members]
            row = {"from": first.isoformat(), "to": (first + timedelta(days=6)).isoformat(),
                   "served": sorted({r["adapter"] for r, _ in members}),
                   "true": true_quality([r["label"] for r, _ in members], actual),
                   "measured_random_picks": sampled_quality(in_week),
                   "estimated_unlabelled": unlabelled.rates(),
                   "labels_handed_out": len(in_week),
                   "labels_received": sum(q["label"] is not None for q in in_week),
                   "retrains": sum(self.week_of(date.fromisoformat(t["day"])) == week
                                   for t in state["retrains"]),
                   **{d: sum(self.week_of(datetime.fromisoformat(x["decided_at"]).date()) == week
                             and x["decision"] == d for x in decisions)
                      for d in ("promote", "rollback")}}
            for kind in ("frozen", "refitted"):
                if kind == "refitted" and policy.trigger == "never":
                    continue
                predicted = [int(lexical_p[kind][str(a.id)] >= lexical_t[kind][str(a.id)])
                             for _, a in members]
                row[f"lexical_{kind}"] = true_quality(predicted, actual)
            weeks[week] = row
        totals = {"true": true_quality([r["label"] for r in rows],
                                       [self.truth[r["external_id"]] for r in rows])}
        for split in self.config.splits:
            chosen = [r for r in rows if self.split_of[r["external_id"]] == split]
            totals[split] = true_quality([r["label"] for r in chosen],
                                         [self.truth[r["external_id"]] for r in chosen])
        for kind in ("frozen", "refitted"):
            if kind == "refitted" and policy.trigger == "never":
                continue
            totals[f"lexical_{kind}"] = true_quality(
                [int(lexical_p[kind][str(a.id)] >= lexical_t[kind][str(a.id)])
                 for a in articles], [self.truth[str(a.id)] for a in articles])
        return {"trigger": policy.trigger, "days_done": state["done"], "weeks": list(weeks.values()),
                "total": totals, "labels_handed_out": len(requests),
                "labels_received": sum(q["label"] is not None for q in requests),
                "retrains": state["retrains"],
                "decisions": {d: sum(x["decision"] == d for x in decisions)
                              for d in ("promote", "keep", "rollback", "not_enough_labels")},
                "compute_s": {"classify": round(state["classify_s"], 1),
                              "train": round(sum(t["train_s"] for t in state["retrains"]), 1)}}


def plot(report: dict[str, Any], path: Path) -> None:
    """F1 of what each policy served per simulated week, with the lexical rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    lexical_drawn = False
    for name, policy in report["policies"].items():
        weeks = policy["weeks"]
        if not weeks:
            continue
        x = [w["from"] for w in weeks]
        axes.plot(x, [w["true"]["f1"] for w in weeks], marker="o", label=f"{name} (adapter)")
        if "lexical_refitted" in weeks[0]:
            axes.plot(x, [w["lexical_refitted"]["f1"] for w in weeks], linestyle=":",
                      label=f"{name} (TF-IDF refitted)")
        if not lexical_drawn:
            axes.plot(x, [w["lexical_frozen"]["f1"] for w in weeks], linestyle="--",
                      color="grey", label="TF-IDF frozen")
            lexical_drawn = True
    axes.set_xlabel("simulated week (publication time, from)")
    axes.set_ylabel("F1 of what was served (true labels)")
    axes.set_title("signals backtest: F1 by week and update policy")
    axes.legend(fontsize=8)
    axes.tick_params(axis="x", rotation=45)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
