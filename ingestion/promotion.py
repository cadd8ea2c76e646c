"""Gated promotion: the shadow candidate replaces production when the live stream says
it is better, and a promoted version that then loses is rolled back.

Every ``promotion.interval_s`` the gate asks the classification API which versions the
two aliases name (``adapter``, e.g. ``production``, and ``shadow_adapter``, e.g.
``candidate``) and compares them on the items both classified since the aliases last
moved:

* **labelled items** (``min_labels`` at least, else ``not_enough_labels``): F1 of each
  version against the effective labels, and a paired bootstrap interval of
  F1(candidate) - F1(production): ``bootstrap_samples`` resamples of the same items
  with replacement, the ``confidence`` interval of the differences. The candidate
  wins when the interval's lower end exceeds ``margin``.
* **unlabelled items**: each version's estimated F1 from its own P(signal) (CBPE,
  :class:`~ingestion.online_metrics.ExpectedConfusion`). A win needs the candidate's
  not to be more than ``max_estimated_f1_drop`` below production's.

A win is a ``promote``: ``production`` is pointed at the candidate's version and the
candidate alias at the version it replaced, which keeps classifying in shadow. If that
replaced version then wins by the same test, the promotion is undone (``rollback``):
production points at it again, and so does the candidate alias, until a retraining
publishes a new candidate. Otherwise the decision is ``keep``. Aliases move through
the classification API's admin route (``POST /v1/aliases/{alias}``, with
``classifier_admin_token``), never by writing registry files. Each decision is stored
with its figures (``GET /v1/promotions``) and counted
(``signals_ingest_promotions_total{decision}``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np

from ingestion.config import IngestConfig, PromotionConfig
from ingestion.metrics import IngestMetrics
from ingestion.online_metrics import ExpectedConfusion
from ingestion.store import Store
from serve.schemas import AliasRequest

log = logging.getLogger(__name__)

ALIAS_MOVES = ("promote", "rollback")


def f1_of(predicted: np.ndarray, actual: np.ndarray) -> float:
    """F1 as 2TP / (2TP + FP + FN); 0 where nothing is predicted or labelled positive."""
    tp = np.sum((predicted == 1) & (actual == 1))
    wrong = np.sum(predicted != actual)
    return float(2 * tp / (2 * tp + wrong)) if 2 * tp + wrong else 0.0


def estimated_f1(labels: list[int], p_signal: list[float]) -> float | None:
    expected = ExpectedConfusion()
    for label, p in zip(labels, p_signal):
        expected.add(label, 1, p)
    return expected.rates()["f1"]


@dataclass
class Judgement:
    """The gate's verdict on one candidate against production, with its figures."""

    wins: bool | None
    """True: the candidate wins; False: it does not; None: not enough labels."""

    figures: dict[str, Any]


def judge(pairs: list[tuple[int, float, int, float, int | None]], policy: PromotionConfig,
          seed: int = 0) -> Judgement:
    """Compare the candidate with production on ``pairs`` (``Store.paired_predictions``)."""
    labelled = [p for p in pairs if p[4] is not None]
    unlabelled = [p for p in pairs if p[4] is None]
    figures: dict[str, Any] = {
        "paired_items": len(pairs), "labelled": len(labelled), "min_labels": policy.min_labels,
        "estimated_f1_production": estimated_f1([p[0] for p in unlabelled],
                                                [p[1] for p in unlabelled]),
        "estimated_f1_candidate": estimated_f1([p[2] for p in unlabelled],
                                               [p[3] for p in unlabelled])}
    if len(labelled) < policy.min_labels:
        return Judgement(None, figures)
    production = np.array([p[0] for p in labelled])
    candidate = np.array([p[2] for p in labelled])
    actual = np.array([p[4] for p in labelled])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labelled), size=(policy.bootstrap_samples, len(labelled)))
    differences = np.array([f1_of(candidate[d], actual[d]) - f1_of(production[d], actual[d])
                            for d in draws])
    tail = (1 - policy.confidence) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    est_p, est_c = figures["estimated_f1_production"], figures["estimated_f1_candidate"]
    estimate_ok = (est_p is None or est_c is None
                   or est_c >= est_p - policy.max_estimated_f1_drop)
    figures |= {"f1_production": f1_of(production, actual),
                "f1_candidate": f1_of(candidate, actual),
                "f1_difference_interval": [float(low), float(high)],
                "confidence": policy.confidence, "margin": policy.margin,
                "estimate_ok": estimate_ok}
    return Judgement(bool(low > policy.margin and estimate_ok), figures)


class PromotionGate:
    """Judges the shadow candidate and moves the aliases (see the module docstring)."""

    def __init__(self, config: IngestConfig, store: Store, metrics: IngestMetrics):
        if config.shadow_adapter is None:
            raise ValueError("promotion needs a shadow_adapter (the candidate alias)")
        self.config, self.store, self.metrics = config, store, metrics
        self.production_alias, self.candidate_alias = config.adapter, config.shadow_adapter

    async def _aliases(self, client: httpx.AsyncClient) -> dict[str, str]:
        token = self.config.classifier_token or self.config.classifier_admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = await client.get("/v1/adapters", headers=headers)
        response.raise_for_status()
        return response.json()["aliases"]

    async def _point(self, client: httpx.AsyncClient, alias: str, version: str) -> None:
        token = self.config.classifier_admin_token
        response = await client.post(
            f"/v1/aliases/{alias}", json=AliasRequest(adapter=version).model_dump(),
            headers={"Authorization": f"Bearer {token}"} if token else None)
        if response.status_code != 200:
            raise RuntimeError(f"classification API refused to point {alias} at {version} "
                               f"({response.status_code}): {response.text[:300]}")

    async def evaluate(self, now: datetime | None = None) -> dict[str, Any] | None:
        """One evaluation; the decision stored, or None when there is nothing to compare
        (an alias unset, or both naming one version)."""
        now = now or datetime.now(timezone.utc)
        async with httpx.AsyncClient(base_url=self.config.classifier_url,
                                     timeout=self.config.classify_timeout_s) as client:
            aliases = await self._aliases(client)
            production = aliases.get(self.production_alias)
            candidate = aliases.get(self.candidate_alias)
            if production is None or candidate is None or production == candidate:
                return None
            moves = await asyncio.to_thread(self.store.promotion_decisions, 1, ALIAS_MOVES)
            last = moves[0] if moves else None
            # Right after a promotion the candidate alias names the version it replaced:
            # that version winning undoes the promotion.
            undoing = (last is not None and last["decision"] == "promote"
                       and last["production"] == candidate and last["candidate"] == production)
            since = datetime.fromisoformat(last["decided_at"]) if last else None
            pairs = await asyncio.to_thread(self.store.paired_predictions, production,
                                            candidate, since)
            verdict = await asyncio.to_thread(judge, pairs, self.config.promotion)
            decision = ("not_enough_labels" if verdict.wins is None else "keep"
                        if not verdict.wins else "rollback" if undoing else "promote")
            if decision == "promote":
                await self._point(client, self.production_alias, candidate)
                await self._point(client, self.candidate_alias, production)
            elif decision == "rollback":
                await self._point(client, self.production_alias, candidate)
                await self._point(client, self.candidate_alias, candidate)
        # Stored as production/candidate *before* the move: what was judged.
        await asyncio.to_thread(self.store.add_promotion, decision, production, candidate,
                                verdict.figures, now)
        self.metrics.promotions.labels(decision).inc()
        log.info("promotion gate: %s (production %s, candidate %s): %s", decision,
                 production, candidate, verdict.figures)
        return {"decision": decision, "production": production, "candidate": candidate,
                "figures": verdict.figures}
