"""TF-IDF + logistic regression on only what an adapter's prompt holds: how much of an
adapter's gap to TF-IDF is article text the adapter never sees.

For each prompt cap, every article is replaced by the short-instruction prompt a
``prompt_style: short`` adapter gets at that cap (``pipeline.prompt.encode_prompt``: the
title and as much body as fits), and the validated TF-IDF baseline
(``train.evaluate.TfidfBaseline``: fitted before the validation days, cut at the
F1-optimal threshold of those days) is fitted and evaluated on those texts; ``full``
is the whole article, as the product's baseline reads it::

    python bench/tfidf_truncation.py --caps 128 192 384 --out bench/results/tfidf-truncation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.settings import Paths  # noqa: E402
from train.config import TrainConfig  # noqa: E402

# the adapters' validation window, as bench/quality_table.py reads it
VALIDATION_DAYS = TrainConfig.model_fields["validation_days"].default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", type=int, nargs="+", default=[128, 192, 384],
                        help="prompt caps in tokens")
    parser.add_argument("--dataset", type=Path, default=Paths().datasets_dir / "reuters-acq")
    parser.add_argument("--base-model", type=Path,
                        default=Paths().models_dir / "SmolLM2-135M-Instruct",
                        help="whose tokenizer counts the tokens")
    parser.add_argument("--splits", nargs="+", default=["1987-04", "1987-06"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/tfidf-truncation.json"))
    args = parser.parse_args(argv)

    from tqdm import tqdm
    from transformers import AutoTokenizer

    from pipeline.dataset import load_split
    from pipeline.prompt import encode_prompt
    from train.evaluate import TfidfBaseline

    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    windows = {split: [a for a in load_split(args.dataset, split) if a.signal is not None]
               for split in ["train", *args.splits]}
    rows: dict[str, dict] = {}
    for cap in [*args.caps, None]:
        label = "full" if cap is None else str(cap)
        started = time.monotonic()
        seen = {}
        for split, articles in windows.items():
            if cap is None:
                seen[split] = articles
                continue
            seen[split] = [a.model_copy(update={"title": "", "text": encode_prompt(
                a, tokenizer, cap, "short").text}) for a in tqdm(
                    articles, desc=f"{split} at {cap} tokens", unit="article")]
        baseline = TfidfBaseline(seen["train"], VALIDATION_DAYS)
        rows[label] = {"threshold": baseline.threshold, **{
            split: {k: baseline.evaluate(seen[split], split).metrics[k]
                    for k in ("n", "tp", "fp", "fn", "tn", "precision", "recall", "f1",
                              "best_f1", "roc_auc")}
            for split in args.splits}, "seconds": round(time.monotonic() - started, 1)}
        print(f"{label:>5}: " + "  ".join(f"{s} F1 {rows[label][s]['f1']:.3f}"
                                          for s in args.splits))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": args.dataset.name, "prompt_style": "short",
                                    "validation_days": VALIDATION_DAYS, "caps": rows},
                                   indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
