"""The experiment's LoRA vs LoRA+ race over several seeds (train/experiment.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from train.experiment import ExperimentConfig, lora_race


def _adapter(curve):
    return SimpleNamespace(manifest=SimpleNamespace(metrics=SimpleNamespace(loss_curve=curve)))


def test_the_race_uses_one_target_every_run_reaches_and_reports_mean_and_spread():
    config = ExperimentConfig(seed=0, race_seeds=[1], smooth=1)
    adapters = {
        "lora": _adapter([1.0, 0.8, 0.6, 0.5]),
        "loraplus": _adapter([1.0, 0.5, 0.3, 0.2]),
        "lora-s1": _adapter([1.0, 0.9, 0.7, 0.6]),       # ends highest: sets the target
        "loraplus-s1": _adapter([1.0, 0.55, 0.4, 0.3]),
    }
    evaluations = {"1987-04": {"lora": {"f1": 0.5}, "loraplus": {"f1": 0.7},
                               "lora-s1": {"f1": 0.6}, "loraplus-s1": {"f1": 0.9}}}
    race = lora_race(config, adapters, evaluations)
    assert race["target_loss"] == 0.6 and race["seeds"] == [0, 1]
    assert race["steps_to_target"] == {"lora": 3, "loraplus": 2}
    steps = race["per_method"]["lora"]["steps_to_target"]
    assert (steps["values"], steps["mean"], steps["min"], steps["max"]) == ([3, 4], 3.5, 3, 4)
    plus_f1 = race["per_method"]["loraplus"]["f1"]["1987-04"]
    assert plus_f1["mean"] == 0.8 and (plus_f1["min"], plus_f1["max"]) == (0.7, 0.9)
    assert race["speedup"] == round(3.5 / 2, 2)


def test_a_run_that_never_reaches_an_explicit_target_is_reported_as_none():
    config = ExperimentConfig(race_seeds=[], smooth=2, target_loss=0.1)
    adapters = {"lora": _adapter([1.0, 0.5, 0.05, 0.05]), "loraplus": _adapter([1.0, 0.9, 0.8])}
    race = lora_race(config, adapters, {"1987-06": {}})
    assert race["steps_to_target"] == {"lora": 4, "loraplus": None}
    assert race["speedup"] is None
    assert race["per_method"]["lora"]["f1"]["1987-06"]["mean"] is None


def test_quality_table_lists_every_model_per_window_with_its_own_threshold():
    from train.experiment import quality_table

    metrics = {"n": 10, "threshold": 0.3, "precision": 0.5, "recall": 1.0, "f1": 0.6667,
               "best_f1": 0.8, "roc_auc": 0.9, "ece": 0.04, "tp": 2}
    report = {"config": ExperimentConfig(race_seeds=[1]).model_dump(mode="json"),
              "adapters": {"lora": {"name": "lora-x"}},
              "evaluations": {"1987-04": {"lora": metrics, "base": {**metrics, "threshold": 0.5}},
                              "1987-06": {"base": metrics}}}
    table = quality_table(report)
    assert table["adapters"] == {"lora": "lora-x"} and table["config"]["race_seeds"] == [1]
    assert table["models"]["lora"] == {"1987-04": {k: metrics[k] for k in (
        "n", "threshold", "precision", "recall", "f1", "best_f1", "roc_auc", "ece")}}
    assert table["models"]["base"]["1987-04"]["threshold"] == 0.5
    assert set(table["models"]["base"]) == {"1987-04", "1987-06"}


def test_tfidf_baseline_and_its_model_agree_on_real_reuters_windows(reuters_dataset):
    """The baseline the experiment reports and the model bench/quality_table.py re-cuts
    are one TF-IDF + LR: same P(signal); it separates June's acquisitions from the rest."""
    from pipeline.dataset import load_split
    from train.evaluate import tfidf_baseline, tfidf_model, tfidf_p_signal

    train = load_split(reuters_dataset, "train")[:3000]
    june = load_split(reuters_dataset, "1987-06")
    evaluation = tfidf_baseline(train, june, "1987-06")
    assert tfidf_p_signal(tfidf_model(train), june) == evaluation.p_signal
    assert evaluation.metrics["n"] == len(june) and evaluation.metrics["roc_auc"] > 0.9


def _run(name, f1_validation, curve, split="train"):
    return {"name": name, "loss_curve": curve,
            "calibration": {"after": {"f1": f1_validation}, "fitted_on": {"split": split}}}


def test_quality_table_names_an_adapter_no_report_holds_by_its_label(tmp_path):
    """`production-cpu=eval.json`: that file's adapter gets the label, so it does not fall
    back to its method prefix (`lora`) and vanish behind the reports' own `lora` row."""
    import json

    from bench.quality_table import collect, read_evaluation

    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps({
        "tfidf-logreg": {"split": "jun", "metrics": {"f1": 0.9}},
        "lora-reuters-acq-train-x": {"split": "jun", "metrics": {"f1": 0.8}}}))
    report = {"config": {"seed": 0}, "adapters": {"lora": _run("lora-a", 0.9, [1.0, 0.5])},
              "evaluations": {"jun": {"lora": {"f1": 0.7}}}}
    _, unlabelled = collect([report], [read_evaluation(str(path))])
    assert unlabelled["lora"]["jun"]["f1"] == 0.7 and "production-cpu" not in unlabelled
    _, models = collect([report], [read_evaluation(f"production-cpu={path}")])
    assert models["production-cpu"]["jun"]["f1"] == 0.8 and models["lora"]["jun"]["f1"] == 0.7
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"lora-x": {}, "lora-y": {}}))
    with pytest.raises(SystemExit, match="one adapter"):
        read_evaluation(f"cpu={two}")


def test_quality_table_combines_runs_of_several_seeds_labelled_by_seed():
    """bench/quality_table.py: a seed-0 run evaluated by `signals eval` (matched by registry
    name), a seed-1 LoRA run with race seed 2 and its April update, and a seed-1 LoRA+ run
    with race seed 2 become one table: labels by seed, mean and spread over the three
    seeds, one race over the seeds holding both methods, and the adapter with the best
    validation F1 (never an update) against the validated TF-IDF row."""
    from bench.quality_table import chosen_on_validation, collect, over_seeds, race, seed_label

    assert seed_label("lora", {"seed": 1, "race_seeds": [2]}) == "lora-s1"
    assert seed_label("lora-s2", {"seed": 1, "race_seeds": [2]}) == "lora-s2"
    assert seed_label("lora-updated", {"seed": 1}) == "lora-updated-s1"
    assert seed_label("loraplus", {"seed": 0}) == "loraplus"

    def metrics(f1):
        return {"f1": f1, "ece": f1 / 10, "threshold": 0.5}

    seed0 = {"config": {"seed": 0, "race_seeds": []},
             "adapters": {"lora": _run("lora-a", 0.90, [1.0, 0.5, 0.2]),
                          "loraplus": _run("loraplus-a", 0.91, [1.0, 0.3, 0.1])},
             "evaluations": {}}
    evaluated = {"lora-a": {"split": "jun", "metrics": metrics(0.80)},
                 "loraplus-a": {"split": "jun", "metrics": metrics(0.70)}}
    lora = {"config": {"seed": 1, "race_seeds": [2]},
            "adapters": {"lora": _run("lora-b", 0.92, [1.0, 0.6, 0.3]),
                         "lora-s2": _run("lora-c", 0.93, [1.0, 0.4, 0.25]),
                         "lora-updated": _run("lora-u", 0.99, [0.2, 0.1], "apr")},
            "evaluations": {"jun": {"base": metrics(0.4), "lora": metrics(0.85),
                                    "lora-s2": metrics(0.90), "lora-updated": metrics(0.95)}}}
    plus = {"config": {"seed": 1, "race_seeds": [2]},
            "adapters": {"loraplus": _run("loraplus-b", 0.90, [1.0, 0.2, 0.15]),
                         "loraplus-s2": _run("loraplus-c", 0.91, [1.0, 0.25, 0.2])},
            "evaluations": {"jun": {"base": metrics(0.0), "loraplus": metrics(0.75),
                                    "loraplus-s2": metrics(0.60)}}}
    adapters, models = collect([seed0, lora, plus], [evaluated])
    assert set(adapters) == {"lora", "loraplus", "lora-s1", "lora-s2", "lora-updated-s1",
                             "loraplus-s1", "loraplus-s2"}
    assert models["lora"]["jun"]["f1"] == 0.80 and models["lora-s1"]["jun"]["f1"] == 0.85
    assert models["base"]["jun"]["f1"] == 0.4  # the first report holding it wins

    seeds = over_seeds(models)
    assert seeds["lora"]["seeds"] == [0, 1, 2]
    assert seeds["lora"]["jun"]["f1"] == {"values": [0.80, 0.85, 0.90], "mean": 0.85,
                                          "min": 0.80, "max": 0.90}
    assert seeds["loraplus"]["jun"]["f1"]["mean"] == round((0.70 + 0.75 + 0.60) / 3, 4)

    result = race(adapters, models, smooth=1)
    assert result["seeds"] == [0, 1, 2] and result["target_loss"] == 0.3  # lora-s1's end
    assert result["per_method"]["lora"]["steps_to_target"]["values"] == [3, 3, 3]
    assert result["per_method"]["loraplus"]["steps_to_target"]["values"] == [2, 2, 2]

    models["tfidf-logreg-validated"] = {"jun": metrics(0.88)}
    chosen = chosen_on_validation(adapters, models, "tfidf-logreg-validated")
    assert chosen["label"] == "lora-s2"  # 0.93; the update's 0.99 (on April) is no candidate
    assert chosen["f1_minus_reference"] == {"jun": 0.02}


def test_the_validated_tfidf_baseline_learns_before_the_window_and_cuts_where_f1_peaks_there(
        reuters_dataset):
    """tfidf-logreg-validated follows the adapters' protocol on real Reuters data: fitted
    on the training split minus its last 5 days, cut at the F1-optimal threshold of those
    days (not 0.5), and that threshold is what its evaluations apply."""
    from pipeline.dataset import load_split
    from classify.calibration import f1_optimal_threshold
    from train.evaluate import TfidfBaseline, tfidf_model, tfidf_p_signal
    from classify.validation import split_off_validation

    train = load_split(reuters_dataset, "train")
    before, window, _, _ = split_off_validation(train, 5)
    baseline = TfidfBaseline(train, validation_days=5)
    own = tfidf_model(before)
    expected, _ = f1_optimal_threshold([a.signal for a in window], tfidf_p_signal(own, window))
    assert baseline.name == "tfidf-logreg-validated"
    assert baseline.threshold == expected != 0.5
    june = load_split(reuters_dataset, "1987-06")
    evaluation = baseline.evaluate(june, "1987-06")
    assert evaluation.p_signal == tfidf_p_signal(own, june)
    assert evaluation.metrics["threshold"] == expected and evaluation.metrics["f1"] > 0.8


def test_f1_difference_is_the_gap_with_a_paired_bootstrap_interval_around_it():
    """train.evaluate.f1_difference: the point gap is sklearn's F1 gap; a model that is
    better on most draws has an interval above 0; a model against itself gains nothing."""
    import random

    from sklearn.metrics import f1_score

    from train.evaluate import f1_difference

    rng = random.Random(1)
    labels = [int(rng.random() < 0.2) for _ in range(2000)]
    good = [y if rng.random() < 0.97 else 1 - y for y in labels]
    worse = [y if rng.random() < 0.90 else 1 - y for y in labels]
    gap = f1_difference(labels, good, worse, resamples=500)
    assert gap["difference"] == round(f1_score(labels, good) - f1_score(labels, worse), 4)
    assert 0 < gap["low"] < gap["difference"] < gap["high"]
    assert gap["share_not_better"] == 0.0
    # two models two articles apart: a draw without either (about e^-2 of them) finds
    # no gap, so the small gap is far from certain
    close = list(good)
    for i in [i for i, y in enumerate(labels) if y and good[i]][:2]:
        close[i] = 0
    near = f1_difference(labels, good, close, resamples=500)
    assert 0 < near["difference"] < 0.01 and near["low"] == 0.0
    assert 0.05 < near["share_not_better"] < 0.3
    same = f1_difference(labels, good, good, resamples=200)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    assert same["share_not_better"] == 1.0
