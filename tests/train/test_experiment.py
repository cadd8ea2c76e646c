"""The experiment's LoRA vs LoRA+ race over several seeds (train/experiment.py)."""

from __future__ import annotations

from types import SimpleNamespace

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
