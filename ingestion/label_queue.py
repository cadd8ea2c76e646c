"""The label queue: which classified items analysts should label, under a daily budget.

Analysts cannot label everything, and not every label helps as much. Each hand-out
(``GET /v1/label-queue``) first repeats the items handed out earlier and still
unlabelled, then, while today's budget (``label_budget_per_day``, UTC days) lasts,
picks new ones among the primary role's unlabelled predictions:

* a share ``label_random_share`` drawn uniformly at random (a simple random sample of
  the candidates at that moment; the chance each had, ``p_inclusion`` = picks /
  candidates, is stored with it), and
* the rest: first the items on which the candidate in shadow (another version) decided
  otherwise than production, newest first (``disagreement``: one of the two is wrong
  there, and these are the labels that tell the promotion gate which; query by
  committee), then by uncertainty: the smallest ``|P(signal) - threshold|``, the items
  whose label is most likely to move the decision boundary (``uncertain``).

Disagreement and uncertainty picks are not representative: precision and recall measured on them are
biased (towards the hard cases). The random picks are, once weighted: with weight
``1 / p_inclusion`` per random pick, the weighted counts of true positives, false
positives and false negatives estimate the stream's (the Hajek estimator);
:func:`sampled_quality` computes them from the labelled random picks only. Every
hand-out is stored (``label_requests``), so the budget holds across restarts and
replicas sharing the store.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from typing import Any

from ingestion.store import Store

MAX_CANDIDATES = 10_000
"""Newest unlabelled predictions considered per hand-out."""


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s day: when the daily budget resets."""
    utc = now.astimezone(timezone.utc)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


class LabelQueue:
    """Picks items to label (see the module docstring) from a :class:`Store`."""

    def __init__(self, store: Store, budget_per_day: int, random_share: float,
                 rng: random.Random | None = None):
        if not 0 <= random_share <= 1:
            raise ValueError(f"random_share must be in [0, 1], not {random_share}")
        self.store, self.budget, self.random_share = store, budget_per_day, random_share
        self.rng = rng or random.Random()

    def hand_out(self, limit: int, now: datetime | None = None) -> dict[str, Any]:
        """Up to ``limit`` items to label: the open hand-outs, then new picks within
        today's budget; with the budget's state."""
        now = now or datetime.now(timezone.utc)
        items = self.store.label_requests_list(open_only=True, limit=limit)
        used = self.store.label_requests_since(day_start(now))
        wanted = min(limit - len(items), self.budget - used)
        if wanted > 0:
            picks = self._pick(wanted)
            if picks:
                self.store.add_label_requests(picks, now)
                used += len(picks)
                items = self.store.label_requests_list(open_only=True, limit=limit)
        return {"items": items,
                "budget": {"per_day": self.budget, "used_today": used,
                           "remaining_today": max(0, self.budget - used)},
                "random_share": self.random_share}

    def _pick(self, wanted: int) -> list[tuple[int, str, float | None]]:
        candidates = self.store.label_candidates(MAX_CANDIDATES)
        wanted = min(wanted, len(candidates))
        if wanted == 0:
            return []
        # Stochastic rounding: one item at a time still gets the random share on average.
        exact = wanted * self.random_share
        n_random = math.floor(exact) + (self.rng.random() < exact - math.floor(exact))
        drawn = self.rng.sample(candidates, n_random)
        p_inclusion = n_random / len(candidates)
        picks = [(c.item_id, "random", p_inclusion) for c in drawn]
        taken = {c.item_id for c in drawn}
        rest = [c for c in candidates if c.item_id not in taken]
        disagreements = [c for c in rest if c.disagrees]  # newest first, as stored
        by_margin = sorted((c for c in rest if not c.disagrees),
                           key=lambda c: (abs(c.p_signal - c.threshold), c.item_id))
        chosen = [(c, "disagreement") for c in disagreements] + [
            (c, "uncertain") for c in by_margin]
        picks += [(c.item_id, reason, None) for c, reason in chosen[:wanted - n_random]]
        return picks


def sampled_quality(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Precision, recall and F1 of the primary predictions estimated from the labelled
    random picks, each weighted by ``1 / p_inclusion`` (None where undefined)."""
    tp = fp = fn = 0.0
    labelled = 0
    for r in requests:
        if r["reason"] != "random" or r["label"] is None or not r["p_inclusion"]:
            continue
        labelled += 1
        weight = 1.0 / r["p_inclusion"]
        if r["predicted"] == 1 and r["label"] == 1:
            tp += weight
        elif r["predicted"] == 1:
            fp += weight
        elif r["label"] == 1:
            fn += weight
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (None if precision is None or recall is None else
          0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return {"labelled_random_picks": labelled, "precision": precision, "recall": recall,
            "f1": f1}
