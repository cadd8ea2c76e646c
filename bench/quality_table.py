"""``bench/results/quality.json``: per model and window, precision, recall, F1 at the model's
own threshold, best F1, ROC-AUC and ECE, beside two TF-IDF + logistic-regression baselines
computed here on the same whole windows:

* ``tfidf-logreg``: trained on the whole training split, cut at 0.5 (the experiment's
  baseline, ``train.evaluate.tfidf_baseline``);
* ``tfidf-logreg-validated``: trained on the training split without its validation days
  and cut at the F1-optimal threshold of that validation window: the same protocol the
  adapters' calibration follows, so the fairest comparison.

    python bench/quality_table.py EVALUATION.json [...] [--report report.json|progress.json]
        [--dataset DIR] [--out bench/results/quality.json]

EVALUATION.json files are what ``signals eval ... --out DIR`` writes (DIR/evaluation.json);
a report's ``evaluations`` (``signals experiment``) are read too. Models are named by their
registry name's method prefix (``lora-reuters-...`` -> ``lora``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.dataset import load_split
from pipeline.settings import Paths
from train.config import TrainConfig
from train.evaluate import TfidfBaseline
from train.experiment import QUALITY_FIELDS

# TrainConfig.validation_days' default: the window the adapters were calibrated on
VALIDATION_DAYS = TrainConfig.model_fields["validation_days"].default


def _row(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in QUALITY_FIELDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="*", type=Path, help="signals eval outputs")
    parser.add_argument("--report", type=Path, help="an experiment's report or progress JSON")
    parser.add_argument("--dataset", type=Path, default=Paths().datasets_dir / "reuters-acq")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    args = parser.parse_args()

    models: dict[str, dict[str, dict]] = {}
    names: dict[str, str] = {}
    for path in args.evaluations:
        for name, result in json.loads(path.read_text()).items():
            label = name.split("-reuters-")[0]
            names[label] = name
            models.setdefault(label, {})[result["split"]] = _row(result["metrics"])
    if args.report:
        report = json.loads(args.report.read_text())
        for split, results in report.get("evaluations", {}).items():
            for label, metrics in results.items():
                models.setdefault(label, {}).setdefault(split, _row(metrics))
    splits = sorted({s for windows in models.values() for s in windows})
    if not splits:
        raise SystemExit("no evaluations given")
    train = load_split(args.dataset, args.train_split)
    test = {s: load_split(args.dataset, s) for s in splits}
    for baseline in (TfidfBaseline(train), TfidfBaseline(train, VALIDATION_DAYS)):
        models[baseline.name] = {s: _row(baseline.evaluate(arts, s).metrics)
                                 for s, arts in test.items()}
    table = {"dataset": args.dataset.name, "windows": {s: len(a) for s, a in test.items()},
             "adapters": names, "models": models}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(f"{'model':24} " + " ".join(f"{s + ' F1':>11} {'ECE':>6}" for s in splits))
    for label, windows in models.items():
        print(f"{label:24} " + " ".join(
            f"{windows[s]['f1']:>11.3f} {windows[s]['ece']:>6.3f}" if s in windows else
            f"{'-':>11} {'-':>6}" for s in splits))


if __name__ == "__main__":
    main()
