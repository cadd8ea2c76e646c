"""``signals backtest`` end to end on real parts: the real classification API (in-process
backend, the real base model, a real trained adapter, admin token) on real HTTP, the
ingestion service's own store (real SQLite files), label queue and promotion gate on a
simulated clock, real retrainings (``signals train --local``, two real steps each) and
the real lexical reference, over four days of real April 1987 Reuters articles. The run
is killed part-way and resumed: nothing is lost or classified twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest
import yaml

from ingestion.backtest import SimulatedClock, UpdatePolicy, retraining_due, true_quality
from ingestion.store import NewPrediction, Store
from pipeline.article import Article
from pipeline.dataset import load_split, publication_day, write_dataset
from serve.app import create_app
from serve.vllm_server import wait_until_ok
from tests.conftest import free_port, publish_variant, serve_app
from tests.ingestion.test_ingest_support import make_classifier
from classify.registry import AdapterRegistry

pytestmark = pytest.mark.slow

ADMIN = "serve-admin-token-for-the-backtest"
BUDGET = 10
PER_DAY = 10


def four_april_days(reuters_dataset, out):
    """A dataset: 300 late-March training articles (replay, the lexical reference) and,
    on each of the first four days of April with articles, 4 signals and 6 others."""
    rng = random.Random(0)
    train = [a for a in load_split(reuters_dataset, "train")
             if a.signal is not None and publication_day(a) >= date(1987, 3, 20)]
    april = [a for a in load_split(reuters_dataset, "1987-04")
             if a.signal is not None and 80 < len(a.text) < 600]
    def enough(day):
        of_day = [a.signal for a in april if publication_day(a) == day]
        return sum(of_day) >= 4 and len(of_day) - sum(of_day) >= PER_DAY - 4
    days = [d for d in sorted({publication_day(a) for a in april}) if enough(d)][:4]
    chosen = []
    for day in days:
        of_day = [a for a in april if publication_day(a) == day]
        chosen += (rng.sample([a for a in of_day if a.signal == 1], 4)
                   + rng.sample([a for a in of_day if a.signal == 0], PER_DAY - 4))
    write_dataset(out, {"train": rng.sample(train, 300), "1987-04": chosen},
                  {"source": "test: a slice of the Reuters dataset"})
    return days, chosen


@pytest.fixture
def served(tmp_path, trained_adapter, base_model_dir, tokenizer):
    root = tmp_path / "registry"
    start = publish_variant(root, trained_adapter, "start", 1.0)
    classifier = make_classifier(base_model_dir, root, tokenizer, max_prompt_tokens=192)
    app = create_app(classifier, max_batch=64, watch_interval_s=None, admin_token=ADMIN)
    with serve_app(app, free_port()) as url:
        wait_until_ok(f"{url}/ready", 120, what="classification API")
        yield url, root, start


def backtest_command(out, config_path):
    return [sys.executable, "-m", "signals", "backtest", "--out", str(out),
            "--config", str(config_path)]


def test_a_backtest_runs_through_the_services_and_resumes_after_a_kill(
        served, reuters_dataset, base_model_dir, tmp_path):
    api_url, root, start = served
    days, chosen = four_april_days(reuters_dataset, tmp_path / "dataset")
    config = {
        "dataset": str(tmp_path / "dataset"), "splits": ["1987-04"],
        "lexical_validation_days": 3, "registry": str(root), "classifier_url": api_url,
        "classifier_admin_token": ADMIN, "start_adapter": start.name,
        # every article of a day is handed out and labelled the same simulated day
        "label_budget_per_day": BUDGET, "label_random_share": 0.5, "label_delay_days": 0,
        "policies": [{"name": "frozen", "trigger": "never"},
                     {"name": "scheduled", "trigger": "schedule", "every_days": 2,
                      "min_new_labels": 5}],
        "retrain": {"overrides": [f"base_model={base_model_dir}", "max_steps=2",
                                  "batch_size=4", "prompt_style=full",
                                  "max_prompt_tokens=192", "bf16=false"],
                    "replay_examples": 16, "calibration_days": 1, "local": True},
        "promotion": {"enabled": True, "min_labels": 4, "bootstrap_samples": 200},
        "batch_size": 8}
    config_path = tmp_path / "backtest.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # Killed once the frozen policy has finished two simulated days.
    first = subprocess.Popen(backtest_command(out, config_path), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while first.poll() is None and time.monotonic() < deadline:
        state = out / "state.json"
        if state.is_file():
            done = json.loads(state.read_text())["policies"].get("frozen", {}).get("done")
            if done is not None and date.fromisoformat(done) >= days[1]:
                break
        time.sleep(0.2)
    assert first.poll() is None, f"the run ended before it could be killed:\n{first.stdout.read()}"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = json.loads((out / "state.json").read_text())["policies"]["frozen"]["done"]

    second = subprocess.run(backtest_command(out, config_path), env=env, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    logs = second.stdout + second.stderr
    # The resumed run starts after the last day the killed one finished.
    assert f"backtest frozen {days[0]}" not in logs
    assert f"backtest frozen {days[-1]}" in logs or killed_at == days[-1].isoformat()

    report = json.loads((out / "backtest.json").read_text())
    truth = {str(a.id): a.signal for a in chosen}
    for name in ("frozen", "scheduled"):
        policy = report["policies"][name]
        assert policy["days_done"] == days[-1].isoformat()
        store = Store(f"sqlite:///{out / f'{name}.sqlite'}")
        rows = store.prediction_rows("primary")
        # every stored item classified exactly once by the production alias
        ids = [r["item_id"] for r in rows]
        assert len(ids) == len(set(ids)) == store.item_count()
        assert store.item_count() >= len(chosen) - 2  # the dedupe may fold a wire repeat
        # the figures are the dataset's truth against what was served
        expected = true_quality([r["label"] for r in rows],
                                [truth[r["external_id"]] for r in rows])
        assert policy["total"]["true"] == expected
        # the label queue kept the daily budget on the simulated days
        requests = store.label_requests_list(open_only=False)
        per_day = Counter(datetime.fromisoformat(r["requested_at"]).date() for r in requests)
        assert max(per_day.values()) <= BUDGET and set(per_day) <= set(days)
        labelled = [r for r in requests if r["label"] is not None]
        assert all(r["label"] == truth[store.get_item(r["item_id"])["external_id"]]
                   for r in labelled)
        assert len(labelled) == len(requests) == len(ids)
        assert policy["labels_received"] == len(labelled)
        decisions = store.promotion_decisions(limit=1000)
        assert sum(policy["decisions"].values()) == len(decisions)
        store.close()

    frozen, scheduled = report["policies"]["frozen"], report["policies"]["scheduled"]
    assert frozen["retrains"] == [] and frozen["decisions"]["promote"] == 0
    assert {v for w in frozen["weeks"] for v in w["served"]} == {start.name}
    assert "lexical_frozen" in frozen["total"] and "lexical_refitted" not in frozen["total"]
    # Every article day's items are labelled that day (the whole day's budget).
    # Scheduled every 2 days with 5 new labels at least, each retraining continues the
    # production version of its day on every label received by then.
    retrains = scheduled["retrains"]
    assert len(retrains) >= 2
    registry = AdapterRegistry(root)
    previous, previous_labels = days[0], 0
    for retrain in retrains:
        day = date.fromisoformat(retrain["day"])
        arrived = sum(d <= day for d in days) * BUDGET
        assert (day - previous).days >= 2 and retrain["labels"] == arrived
        assert arrived - previous_labels >= 5 and retrain["replay"] == 16
        previous, previous_labels = day, arrived
        manifest = registry.get(retrain["version"]).manifest
        assert manifest.init_adapter == retrain["from"]
        assert manifest.metrics.steps == 2
    assert retrains[0]["from"] == start.name
    assert len(json.loads((out / "state.json").read_text())["policies"]["scheduled"][
        "lexical_refits"]) == len(retrains)
    assert scheduled["total"]["lexical_refitted"]["n"] == scheduled["total"]["true"]["n"]
    # A candidate retrained on the third article day classified the fourth's items in
    # shadow, and with their labels the gate judged it (promote or keep: the evidence).
    store = Store(f"sqlite:///{out / 'scheduled.sqlite'}")
    judged = [d for d in store.promotion_decisions(limit=1000)
              if d["decision"] != "not_enough_labels"]
    store.close()
    assert judged and all(d["figures"]["labelled"] >= 4 for d in judged)
    assert scheduled["decisions"]["promote"] + scheduled["decisions"]["keep"] >= 1
    assert (out / "f1-by-week.png").stat().st_size > 1000


def test_a_backtest_against_an_api_that_is_down_says_so(trained_adapter, registry_dir,
                                                         reuters_dataset, tmp_path):
    """No classification API at --classifier-url: one clear line, the CLI's exit 2, no
    traceback, before any policy started (no store, no state)."""
    out = tmp_path / "run"
    result = subprocess.run([
        sys.executable, "-m", "signals", "backtest", "--out", str(out),
        "--dataset", str(reuters_dataset), "--registry", str(registry_dir),
        "--start-adapter", trained_adapter.name, "--days", "1",
        "--classifier-url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the classification API at http://127.0.0.1:" in result.stderr
    assert "is unreachable" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "state.json").exists() and not list(out.glob("*.sqlite"))


def test_the_drift_trigger_reads_the_random_picks_only(tmp_path):
    """The drift policy's rule on a real store: uncertain picks (all wrong) never fire it;
    random picks with a low F1 do, once there are enough of them, outside the cooldown."""
    clock = SimulatedClock(datetime(1987, 4, 10, 23, 59, 59, tzinfo=timezone.utc))
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}", clock=clock)
    ids = [store.insert_item(Article(id=f"a{i}", title=f"title {i}", text=f"text {i}",
                                     date_published=clock.now),
                             "backtest", f"hash{i}", None, shadow=False)[0] for i in range(30)]
    store.record_predictions("primary", [NewPrediction(
        item_id=i, requested="production", adapter="v1", p_signal=0.9, threshold=0.5,
        label=1, truncated=False) for i in ids])
    policy = UpdatePolicy(name="drift", trigger="drift", f1_floor=0.8, min_random_labels=10,
                          min_new_labels=1)
    day, first_day = date(1987, 4, 10), date(1987, 4, 1)
    state = {"last_retrain_day": None, "labels_at_last_retrain": 0}
    # 20 uncertain picks, every one predicted 1 and labelled 0: ignored by the rule
    store.add_label_requests([(i, "uncertain", None) for i in ids[:20]], clock.now)
    for i in ids[:20]:
        store.add_feedback(i, 0, "analyst")
    assert not retraining_due(policy, day, first_day, store, state, labels=20)
    # 10 random picks, half of them wrong: F1 2*5 / (2*5 + 5) = 0.667 < 0.8
    store.add_label_requests([(i, "random", 0.5) for i in ids[20:]], clock.now)
    for n, i in enumerate(ids[20:]):
        store.add_feedback(i, n % 2, "analyst")
    assert retraining_due(policy, day, first_day, store, state, labels=30)
    # not within the cooldown of the last retraining, nor without enough new labels
    assert not retraining_due(policy, day, first_day, store,
                              {**state, "last_retrain_day": "1987-04-07"}, labels=30)
    assert not retraining_due(policy, day, first_day, store,
                              {**state, "labels_at_last_retrain": 30}, labels=30)
    # a week later the window holds none of these picks: nothing to read, no retraining
    clock.now += timedelta(days=8)
    assert not retraining_due(policy, day + timedelta(days=8), first_day, store, state,
                              labels=30)
    store.close()


def test_the_documented_backtest_config_validates():
    """bench/backtest-april.yaml, the command README and bench/RESULTS.md give."""
    from pathlib import Path

    from ingestion.backtest import BacktestConfig

    path = Path(__file__).parents[2] / "bench" / "backtest-april.yaml"
    config = BacktestConfig.model_validate(yaml.safe_load(path.read_text()))
    assert [p.trigger for p in config.policies] == ["never", "schedule", "drift"]
    assert config.retrain.train_config.is_file()
