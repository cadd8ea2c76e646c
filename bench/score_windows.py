"""Per-article scores of one served version on whole windows, for ``bench/quality_table.py``.

Scores every labelled article of the validation window (the last ``--validation-days``
of the training split) and of each test split with the serving classifier
(``train.evaluate.Scorer``: a running vLLM server, or in process), exactly as the API
answers: for each article its raw P (the adapter's two-token softmax), the calibrated
P the version answers with and the threshold it applies. For an ensemble version the
adapter alone is also recorded (its own calibration of the same raw P, what the API
answers for the adapter version), with the ensemble's lexical margin, so the adapter
and the ensemble are read from one pass of the model.

    python bench/score_windows.py VERSION --label NAME [--splits 1987-04 1987-06]
        [--vllm-url http://127.0.0.1:8100] [--dataset DIR] [--registry DIR]
        [--out bench/results/quality-scores/NAME.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.dataset import labelled_sample, load_split
from pipeline.settings import Paths
from classify.validation import split_off_validation

VALIDATION = "validation"
"""How the scores name the training split's validation window."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="version name or alias in the registry")
    parser.add_argument("--label", required=True, help="the model's name in quality.json")
    parser.add_argument("--splits", nargs="+", default=["1987-04", "1987-06"])
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--validation-days", type=int, default=5)
    parser.add_argument("--vllm-url", help="a running vLLM server (default: in process)")
    parser.add_argument("--dataset", type=Path, default=Paths().datasets_dir / "reuters-acq")
    parser.add_argument("--registry", type=Path, default=Paths().registry_dir)
    parser.add_argument("--base-model", type=Path,
                        default=Paths().models_dir / "SmolLM2-135M-Instruct")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from train.evaluate import Scorer
    from classify.lexical import LexicalModel

    scorer = Scorer(args.base_model, args.registry, 512, vllm_url=args.vllm_url)
    version = scorer.classifier.resolve(args.version)
    ensemble = version.manifest.ensemble
    lexical = (LexicalModel.load(version.path / ensemble.lexical_file)
               if ensemble is not None else None)
    _, window, _, _ = split_off_validation(load_split(args.dataset, args.train_split),
                                           args.validation_days)
    windows = {VALIDATION: labelled_sample(window),
               **{s: [a for a in load_split(args.dataset, s) if a.signal is not None]
                  for s in args.splits}}
    out = {"label": args.label, "version": version.name,
           "backend": scorer.classifier.backend.name, "ensemble": ensemble is not None,
           "threshold": (ensemble or version.calibration).threshold,
           "fitted_rate": scorer.classifier.fitted_rate(version),
           "adapter_threshold": version.calibration.threshold,
           "adapter_fitted_rate": version.calibration.fitted_on.base_rate,
           "validation_f1": (ensemble.after.f1 if ensemble else version.calibration.after.f1),
           "adapter_validation_f1": version.calibration.after.f1,
           "windows": {}, "seconds": {}}
    try:
        for split, articles in windows.items():
            started = time.monotonic()
            results = scorer.classify(articles, version.name)
            margins = lexical.margin(articles) if lexical is not None else [None] * len(articles)
            out["windows"][split] = [
                {"id": a.id, "signal": a.signal, "p_raw": r.p_raw, "p_signal": r.p_signal,
                 "p_adapter": version.calibration.apply(r.p_raw), "margin": m}
                for a, r, m in zip(articles, results, margins)]
            out["seconds"][split] = round(time.monotonic() - started, 1)
            print(f"{split}: {len(articles)} articles in {out['seconds'][split]} s")
    finally:
        scorer.close()
    path = args.out or Path("bench/results/quality-scores") / f"{args.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
