"""How sure is "the ensemble beats the tuned TF-IDF"? A paired bootstrap over articles.

Reads one ``bench/score_windows.py`` file of an ensemble version (its per-article P and
the lexical margin of the TF-IDF model stored inside it, the tuned reference), resamples
each window's articles with replacement and reports F1(ensemble) - F1(TF-IDF), each at
its own validation threshold, with a 95% interval and the share of resamples where the
ensemble is behind. Nothing is fitted: both models and thresholds are the version's.

    python bench/paired_bootstrap.py bench/results/quality-scores/NAME.json
        [--resamples 2000] [--registry DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.metrics import f1_score

from classify.lexical import LexicalModel
from pipeline.settings import Paths

VALIDATION = "validation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", type=Path, help="a bench/score_windows.py output")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--registry", type=Path, default=Paths().registry_dir)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    scores = json.loads(args.scores.read_text(encoding="utf-8"))
    if not scores.get("ensemble"):
        parser.error(f"{args.scores}: not an ensemble version's scores")
    lexical = LexicalModel.load(args.registry / scores["version"] / "lexical.joblib")
    rng = np.random.default_rng(args.seed)
    out = {"scores": str(args.scores), "version": scores["version"],
           "reference": lexical.params.label, "resamples": args.resamples, "windows": {}}
    for window, rows in scores["windows"].items():
        if window == VALIDATION:
            continue
        y = np.array([r["signal"] for r in rows])
        ensemble = np.array([r["p_signal"] for r in rows]) >= scores["threshold"]
        reference = np.array([lexical.calibration.apply(float(p)) for p in
                              expit([r["margin"] for r in rows])]
                             ) >= lexical.calibration.threshold
        diff = f1_score(y, ensemble) - f1_score(y, reference)
        draws = rng.integers(0, len(y), size=(args.resamples, len(y)))
        diffs = np.array([f1_score(y[i], ensemble[i]) - f1_score(y[i], reference[i])
                          for i in draws])
        low, high = np.quantile(diffs, [0.025, 0.975])
        out["windows"][window] = {
            "n": len(y), "f1_ensemble": round(float(f1_score(y, ensemble)), 4),
            "f1_reference": round(float(f1_score(y, reference)), 4),
            "difference": round(float(diff), 4),
            "interval_95": [round(float(low), 4), round(float(high), 4)],
            "share_behind": round(float((diffs < 0).mean()), 3)}
        print(f"{window}: F1 {out['windows'][window]['f1_ensemble']} against "
              f"{out['windows'][window]['f1_reference']}, difference {diff:+.4f}, 95% "
              f"[{low:+.4f}, {high:+.4f}], behind in {(diffs < 0).mean():.0%} of resamples")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
