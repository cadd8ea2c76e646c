"""Training recipes compared on whole windows, chosen on validation: variants of one
training config, each trained, calibrated on its validation window, then evaluated on
every article of the later windows beside the two TF-IDF baselines; optionally DPO from
the variant with the best validation F1 (chosen there, never on the test windows), and
any further runs from that adapter (``--then``: RLHF, an update on a later window, ...).

Each variant is the config with some fields changed (``--variant
name:field=value,field=value``, as ``bench/bench_training.py``). Everything runs in this
one process (in-process training and scoring, on CUDA when there is one), and
``OUT/recipes.json`` plus ``OUT/eval-<split>.json`` are rewritten after every training and
evaluation, so a run cut off by a time limit keeps what it finished. The eval files have
the shape ``signals eval --out`` writes (``bench/quality_table.py LABEL=FILE`` reads them),
and each adapter's entry adds its F1 minus the tuned TF-IDF reference's on the same articles with
a 95% paired bootstrap interval; ``OUT/scores-<split>.json`` holds every model's
P(signal) per article::

    python bench/recipes.py --config train/configs/production.yaml \\
        --set batch_size=32 max_examples=null sampling=random validation_max_examples=null \\
        --variant short-128: --variant short-384:max_prompt_tokens=384 \\
        --dpo max_steps=100 learning_rate=5e-5 \\
        --then rlhf:method=rlhf,reward_steps=100,max_steps=30,learning_rate=1e-5 \\
        --then update:split=1987-04,max_steps=80 --out OUT

A ``--then`` run starts from the chosen variant (``init_adapter``) with that variant's
fields and its own; it is not evaluated on the window it trained on (``split``).

A machine with a GPU runs this in minutes (``bench/gpu_recipes.sh``); on this 2-core CPU
one whole-window variant takes hours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_training import parse_variant  # noqa: E402
from train.config import load_config  # noqa: E402

log = logging.getLogger("recipes")


def validation_f1(version) -> float | None:
    """The F1 its calibration reached on the validation window (None: uncalibrated)."""
    return version.calibration.after.f1 if version.calibration else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="the training config")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override for every variant")
    parser.add_argument("--variant", dest="variants", action="append", type=parse_variant,
                        required=True, metavar="NAME:FIELD=VALUE,...",
                        help="a variant, trained and evaluated in the order given")
    parser.add_argument("--dpo", nargs="*", default=None, metavar="FIELD=VALUE",
                        help="also train DPO (these fields) from the variant with the best "
                             "validation F1 (the run dpo-from-<variant>)")
    parser.add_argument("--then", dest="then", action="append", type=parse_variant,
                        default=[], metavar="NAME:FIELD=VALUE,...",
                        help="a further run from the variant with the best validation F1 "
                             "(NAME-from-<variant>)")
    parser.add_argument("--eval-split", dest="eval_splits", action="append",
                        help="whole window to evaluate on (default: 1987-04 and 1987-06)")
    parser.add_argument("--eval-limit", type=int, default=None, metavar="N",
                        help="a seeded N articles of each window instead of all (dry runs)")
    parser.add_argument("--out", type=Path, required=True, help="result directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from pipeline.dataset import load_split
    from pipeline.dataset import labelled_sample
    from train.evaluate import Scorer, TfidfBaseline, TunedLexical, f1_difference
    from train.experiment import adapter_rows
    from train.jobs import run_training

    started = time.monotonic()
    splits = args.eval_splits or ["1987-04", "1987-06"]
    shared = load_config(args.config, args.set)  # every field checked before any work
    configs = {name: load_config(args.config, [*args.set, *fields])
               for name, fields in args.variants}
    then = ([("dpo", ["method=dpo", *args.dpo])] if args.dpo is not None else []) + args.then
    for name, fields in then:  # checked now: the chosen variant is not known yet
        for variant_fields in dict(args.variants).values():
            load_config(args.config, [*args.set, *variant_fields,
                                      "init_adapter=chosen-later", *fields])
    args.out.mkdir(parents=True, exist_ok=True)

    # The largest cap of any variant: the scorer serves each adapter at its own trained
    # cap within this one (classify.classifier), as the server does.
    cap = max(c.max_prompt_tokens for c in configs.values())
    windows = {split: labelled_sample(load_split(shared.dataset, split), args.eval_limit,
                                      shared.seed) for split in splits}
    train_articles = load_split(shared.dataset, shared.split)
    evaluations: dict[str, dict[str, Any]] = {split: {} for split in splits}
    # Every model's P(signal) per article, for what the metrics cannot answer later
    # (paired comparisons, error analysis): OUT/scores-<split>.json.
    scores: dict[str, dict[str, Any]] = {
        split: {"ids": [str(a.id) for a in articles],
                "labels": [a.signal for a in articles]} for split, articles in windows.items()}
    reference: dict[str, Any] = {}  # the tuned TF-IDF reference's evaluation per window
    adapters: dict[str, Any] = {}
    record: dict[str, Any] = {"config_file": str(args.config), "set": args.set,
                              "variants": {n: f for n, f in args.variants},
                              "dpo": args.dpo, "then": dict(args.then), "chosen": None}

    def write() -> None:
        # recipes.json reads as an experiment report (adapters and per-split metrics),
        # so bench/quality_table.py --report takes it as it is.
        record["adapters"] = adapter_rows(adapters)
        record["evaluations"] = {split: {label: e["metrics"] for label, e in results.items()}
                                 for split, results in evaluations.items()}
        record["validation_f1"] = {k: validation_f1(v) for k, v in adapters.items()}
        record["wall_time_s"] = round(time.monotonic() - started, 1)
        (args.out / "recipes.json").write_text(json.dumps(record, indent=2))
        for split in splits:
            (args.out / f"eval-{split}.json").write_text(
                json.dumps(evaluations[split], indent=2))
            (args.out / f"scores-{split}.json").write_text(json.dumps(scores[split]))

    for baseline in (TfidfBaseline(train_articles, threshold=0.5),
                     TfidfBaseline(train_articles, shared.validation_days),
                     TunedLexical(train_articles, shared.validation_days)):
        for split, articles in windows.items():
            evaluation = baseline.evaluate(articles, split)
            evaluations[split][baseline.name] = evaluation.to_dict()
            scores[split][baseline.name] = [round(p, 6) for p in evaluation.p_signal]
            if baseline.name == TunedLexical.name:
                reference[split] = evaluation
    write()

    scorer = Scorer(shared.base_model, shared.registry, cap)

    def train_and_evaluate(label: str, config) -> None:
        version = run_training(config, local=True)
        adapters[label] = version
        log.info("%s: %s, validation F1 %s, %.0f s", label, version.name,
                 validation_f1(version), version.manifest.wall_time_s or 0)
        write()
        for split, articles in windows.items():
            if split == config.split:
                continue  # it trained on this window: not a test window for it
            evaluation = scorer.evaluate(articles, version.name, split, None)
            evaluations[split][label] = {
                **evaluation.to_dict(), "adapter": version.name,
                # F1 minus the tuned TF-IDF's on these articles, 95% paired bootstrap
                "f1_minus_tfidf_tuned": f1_difference(
                    evaluation.labels, evaluation.predicted, reference[split].predicted)}
            scores[split][label] = [round(p, 6) for p in evaluation.p_signal]
            m = evaluation.metrics
            log.info("%s on %s: F1 %.3f at %.3f (AUC %.3f, ECE %.3f)", label, split, m["f1"],
                     m["threshold"], m["roc_auc"] or 0, m["ece"])
            write()

    try:
        for name, config in configs.items():
            train_and_evaluate(name, config)
        if then:
            scored = {k: validation_f1(v) for k, v in adapters.items()
                      if validation_f1(v) is not None}
            if not scored:
                raise SystemExit("no calibrated variant to start from")
            chosen = max(scored, key=scored.get)
            record["chosen"] = {"label": chosen, "validation_f1": scored[chosen]}
            for name, fields in then:
                train_and_evaluate(f"{name}-from-{chosen}", load_config(args.config, [
                    *args.set, *dict(args.variants)[chosen],
                    f"init_adapter={adapters[chosen].name}", *fields]))
    finally:
        scorer.close()
        write()
    log.info("results in %s (%.0f s)", args.out, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
