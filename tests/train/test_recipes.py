"""bench/recipes.py: variants of one training config trained, calibrated and evaluated on
whole windows in one process, DPO from the variant chosen on validation, and the result
read back by bench/quality_table.py (real training steps on the tiny model)."""

import json

import pytest

from bench.quality_table import chosen_on_validation, collect, over_seeds, read_evaluation


def test_recipes_train_each_variant_and_start_dpo_from_the_best_on_validation(
        tiny_overrides, tmp_path):
    from bench.recipes import main
    from classify.registry import AdapterRegistry

    out = tmp_path / "out"
    # ensemble=false: the production recipe fits an ensemble per variant (a TF-IDF grid
    # over the whole training window, ~1 min each here); tests/train/test_ensemble_training.py
    # covers it.
    assert main(["--config", "train/configs/production.yaml", "--set", *tiny_overrides,
                 "ensemble=false",
                 "--variant", "short:", "--variant", "short-s1:seed=1,max_prompt_tokens=192",
                 "--dpo", "max_steps=1", "learning_rate=5e-5",
                 "--then", "update:split=1987-04,max_steps=1",
                 "--eval-limit", "12", "--out", str(out)]) == 0

    record = json.loads((out / "recipes.json").read_text())
    validation = record["validation_f1"]
    chosen = max(("short", "short-s1"), key=validation.get)
    assert record["chosen"] == {"label": chosen, "validation_f1": validation[chosen]}
    assert set(record["adapters"]) == {"short", "short-s1", f"dpo-from-{chosen}",
                                       f"update-from-{chosen}"}

    registry = AdapterRegistry(tmp_path / "registry")
    versions = {label: registry.resolve(row["name"]) for label, row in record["adapters"].items()}
    hyper = {label: v.manifest.hyperparameters for label, v in versions.items()}
    assert hyper["short"].max_prompt_tokens == 160 and hyper["short-s1"].max_prompt_tokens == 192
    assert {h.prompt_style for h in hyper.values()} == {"short"}  # production.yaml's
    dpo = versions[f"dpo-from-{chosen}"].manifest
    assert dpo.method == "dpo" and dpo.init_adapter == record["adapters"][chosen]["name"]
    update = versions[f"update-from-{chosen}"].manifest
    assert update.method == "lora" and update.init_adapter == record["adapters"][chosen]["name"]
    assert update.dataset.split == "1987-04"

    for split in ("1987-04", "1987-06"):
        evaluation = json.loads((out / f"eval-{split}.json").read_text())
        # the update is no test of the window it trained on
        updated = {f"update-from-{chosen}"} if split == "1987-06" else set()
        assert set(evaluation) == {"tfidf-logreg", "tfidf-logreg-validated", "tfidf-tuned",
                                   "short",
                                   "short-s1", f"dpo-from-{chosen}", *updated}
        assert {e["metrics"]["n"] for e in evaluation.values()} == {12}
        # each adapter at its own calibrated threshold, the one its manifest holds
        for label, version in versions.items():
            if label not in evaluation:
                continue
            assert evaluation[label]["adapter"] == version.name
            assert evaluation[label]["metrics"]["threshold"] == version.calibration.threshold
        assert record["evaluations"][split]["short"] == evaluation["short"]["metrics"]
        scores = json.loads((out / f"scores-{split}.json").read_text())
        assert set(scores) == {"ids", "labels", *evaluation}
        assert {len(v) for v in scores.values()} == {12}
        reference = evaluation["tfidf-tuned"]["metrics"]["f1"]
        for label, entry in evaluation.items():
            if label.startswith("tfidf"):
                continue
            gap = entry["f1_minus_tfidf_tuned"]
            assert gap["difference"] == pytest.approx(entry["metrics"]["f1"] - reference,
                                                      abs=2e-4)
            assert gap["low"] <= gap["difference"] <= gap["high"]

    # quality_table reads recipes.json as a report: seeds spread, the choice on validation
    adapters, models = collect([record], [read_evaluation(str(out / "eval-1987-06.json"))])
    assert over_seeds(models)["short"]["seeds"] == [0, 1]
    # the update's validation days are April's: never a candidate, whatever its F1
    candidates = {k: v for k, v in validation.items() if not k.startswith("update-")}
    assert chosen_on_validation(adapters, models, "tfidf-logreg")["label"] == max(
        candidates, key=candidates.get)
    assert adapters[f"update-from-{chosen}"]["calibration"]["fitted_on"]["split"] == "1987-04"


def test_a_bad_field_of_a_later_run_fails_before_any_training(tiny_overrides, tmp_path):
    """--then runs are checked with every variant's fields before the first step."""
    from bench.recipes import main
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="no_such_field"):
        main(["--config", "train/configs/production.yaml", "--set", *tiny_overrides,
              "--variant", "short:", "--then", "rlhf:method=rlhf,no_such_field=1",
              "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not (tmp_path / "registry").exists()


def test_quality_table_spreads_any_label_run_on_several_seeds():
    def metrics(f1):
        return {"f1": f1, "ece": 0.01}

    models = {"short-384": {"jun": metrics(0.9)}, "short-384-s1": {"jun": metrics(0.8)},
              "dpo-from-short-384": {"jun": metrics(0.7)}, "short-128": {"jun": metrics(0.6)},
              "lonely-s1": {"jun": metrics(0.5)}}
    seeds = over_seeds(models)
    assert list(seeds) == ["short-384"]  # lonely-s1 has no seed-0 run beside it
    assert seeds["short-384"]["seeds"] == [0, 1]
    assert seeds["short-384"]["jun"]["f1"]["mean"] == 0.85


def test_a_variant_s_list_value_keeps_its_commas():
    from bench.bench_training import parse_variant

    text = "rpo:method=dpo,loss_type=[sigmoid,sft],loss_weights=[1,0.5],beta=0.1"
    assert parse_variant(text) == (
        "rpo", ["method=dpo", "loss_type=[sigmoid,sft]", "loss_weights=[1,0.5]", "beta=0.1"])
    assert parse_variant("plain:") == ("plain", [])
