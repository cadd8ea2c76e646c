"""``bench/results/quality.json`` from the full-scale experiment runs, in one command: per
model and window, precision, recall, F1 at the model's own threshold, best F1, ROC-AUC and
ECE; the mean and spread over seeds; LoRA vs LoRA+ steps to one common target loss; the
adapter chosen on the validation window against the fairest baseline. Beside them, two
TF-IDF + logistic-regression baselines computed here on the same whole windows
(``train.evaluate.TfidfBaseline``):

* ``tfidf-logreg``: trained on the whole training split, cut at 0.5;
* ``tfidf-logreg-validated``: trained on the training split without its validation days
  and cut at the F1-optimal threshold of that validation window: the same protocol the
  adapters' calibration follows, so the fairest comparison.

    python bench/quality_table.py [[LABEL=]EVALUATION.json ...] --report REPORT.json [...]
        [--smooth N] [--plot loss.png] [--dataset DIR] [--out bench/results/quality.json]

Beside them, the reference every adapter is held against:

* ``tfidf-tuned``: TF-IDF + logistic regression or a linear SVM, its settings chosen on
  the validation window from ``classify.lexical.LEXICAL_GRID`` (the grid and the choice
  are in ``lexical_reference``), Platt-calibrated and cut there.

``--scores FILE ...`` adds the versions ``bench/score_windows.py`` scored article by
article (an adapter, an ensemble version and the adapter inside it): each, and the
tuned reference, with and without label shift (the window's signal rate estimated by
EM from its own calibrated P, labels unread; ``+label-shift`` rows), on whole windows;
``label_shift_on_validation`` simulates shifted windows by subsampling the validation
window; ``chosen_on_validation`` names the version the product would serve (the best F1
on the validation window among the scored versions and the reference), with label shift
on where it raised that version's mean F1 on the simulated windows, and its F1 minus the
tuned reference's.

A REPORT is what ``signals experiment`` writes (``report.json``, or ``progress.json`` for a
run cut off). A run with ``seed: S`` names its adapters ``lora``, ``loraplus``, ...; here
they are labelled by seed (``lora`` for seed 0, ``lora-s1`` for seed 1, also for the
``race_seeds`` runs), so several runs combine. EVALUATION.json files are what ``signals
eval ... --out DIR`` writes (DIR/evaluation.json), for adapters a run trained but did not
evaluate; they are matched to the reports' adapters by registry name, or named by the
``LABEL=`` before their path (an adapter no report holds).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from statistics import mean
from types import SimpleNamespace
from typing import Any

from pipeline.dataset import labelled_sample, load_split
from pipeline.settings import Paths
from train.config import TrainConfig
from train.evaluate import TfidfBaseline, TunedLexical
from train.experiment import QUALITY_FIELDS, ExperimentConfig, lora_race
from classify.validation import split_off_validation

# TrainConfig.validation_days' default: the window the adapters were calibrated on
VALIDATION_DAYS = TrainConfig.model_fields["validation_days"].default
SFT = ("lora", "loraplus")


def _row(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in QUALITY_FIELDS}


def seed_label(label: str, report_config: dict) -> str:
    """A report's adapter label, named by seed: ``lora`` of a ``seed: 1`` run is
    ``lora-s1``; its ``race_seeds`` runs keep their ``-s<seed>``; seed 0 stays bare."""
    match = re.fullmatch(r"(.+)-s(\d+)", label)
    if match and int(match[2]) in report_config.get("race_seeds", []):
        return label
    seed = report_config.get("seed", 0)
    return label if seed == 0 else f"{label}-s{seed}"


def collect(reports: list[dict], evaluation_files: list[dict]
            ) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """``(adapters, models)``: every report's adapter rows and evaluations, labelled by
    seed; the first report that holds a label wins."""
    adapters: dict[str, dict] = {}
    models: dict[str, dict[str, dict]] = {}
    for report in reports:
        config = report.get("config", {})
        labels = {label: seed_label(label, config) for label in report.get("adapters", {})}
        for label, row in report.get("adapters", {}).items():
            adapters.setdefault(labels[label], row)
        for split, results in report.get("evaluations", {}).items():
            for label, metrics in results.items():
                models.setdefault(labels.get(label, label), {}).setdefault(split, metrics)
    by_name = {row["name"]: label for label, row in adapters.items()}
    for evaluation in evaluation_files:
        for name, result in evaluation.items():
            label = by_name.get(name, name.split("-reuters-")[0])
            models.setdefault(label, {}).setdefault(result["split"], result["metrics"])
    return adapters, models


def read_evaluation(argument: str) -> dict:
    """An EVALUATION.json given as ``PATH``, or as ``LABEL=PATH``: then its adapter (every
    model but the base and the baselines) is labelled LABEL, for an adapter no report
    holds (a run of another recipe), whose method prefix would otherwise collide with the
    reports' labels."""
    label, sep, path = argument.rpartition("=")
    evaluation = json.loads(Path(path if sep else argument).read_text())
    if not sep:
        return evaluation
    adapters = [name for name in evaluation if name != "base" and not name.startswith("tfidf")]
    if len(adapters) != 1:
        raise SystemExit(f"{argument}: LABEL=PATH needs a file with one adapter, found "
                         f"{adapters or 'none'}")
    return {label if name == adapters[0] else name: result
            for name, result in evaluation.items()}


def seeds_of(method: str, labels) -> dict[int, str]:
    """{seed: label} of one method's runs among ``labels``."""
    found = {0: method} if method in labels else {}
    for label in labels:
        match = re.fullmatch(re.escape(method) + r"-s(\d+)", label)
        if match:
            found[int(match[1])] = label
    return dict(sorted(found.items()))


def spread(values: list[float]) -> dict[str, Any]:
    return {"values": values, "mean": round(mean(values), 4), "min": min(values),
            "max": max(values)}


def over_seeds(models: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Mean and spread (min..max) over seeds of F1 and ECE per window, for every label
    that has seed runs beside it (``lora`` with ``lora-s1``, a recipe ``short-384`` with
    ``short-384-s1``, ...)."""
    out: dict[str, dict] = {}
    families = sorted({m[1] for label in models
                       if (m := re.fullmatch(r"(.+)-s\d+", label)) and m[1] in models})
    for method in families:
        runs = seeds_of(method, models)
        if len(runs) < 2:
            continue
        splits = sorted(set.intersection(*(set(models[label]) for label in runs.values())))
        out[method] = {"seeds": list(runs), **{split: {
            key: spread([models[label][split][key] for label in runs.values()])
            for key in ("f1", "ece")} for split in splits}}
    return out


def race(adapters: dict[str, dict], models: dict[str, dict[str, dict]], smooth: int
         ) -> dict[str, Any] | None:
    """LoRA vs LoRA+ (``train.experiment.lora_race``) over every seed that has both."""
    lora, plus = seeds_of("lora", adapters), seeds_of("loraplus", adapters)
    seeds = [seed for seed in lora if seed in plus]
    if not seeds:
        return None
    runs: dict[str, SimpleNamespace] = {}
    evaluations: dict[str, dict[str, dict]] = {}
    for i, seed in enumerate(seeds):
        for method, labels in (("lora", lora), ("loraplus", plus)):
            label = method if i == 0 else f"{method}-s{seed}"
            runs[label] = SimpleNamespace(manifest=SimpleNamespace(metrics=SimpleNamespace(
                loss_curve=adapters[labels[seed]]["loss_curve"])))
            for split, metrics in models.get(labels[seed], {}).items():
                evaluations.setdefault(split, {})[label] = metrics
    config = ExperimentConfig(seed=seeds[0], race_seeds=seeds[1:], smooth=smooth)
    return lora_race(config, runs, evaluations)


def chosen_on_validation(adapters: dict[str, dict], models: dict[str, dict[str, dict]],
                         reference: str, train_split: str = "train") -> dict[str, Any] | None:
    """The adapter a user would serve: the best validation F1 among the adapters
    calibrated on the training split's validation days (not the updates, whose
    validation days are another window's and which trained on a test window), and its
    test windows against ``reference``."""
    scored = {label: row["calibration"]["after"]["f1"] for label, row in adapters.items()
              if row.get("calibration") and label in models
              and row["calibration"]["fitted_on"]["split"] == train_split}
    if not scored:
        return None
    label = max(scored, key=scored.get)
    return {"label": label, "name": adapters[label]["name"],
            "validation_f1": scored, "reference": reference,
            "f1_minus_reference": {
                split: round(m["f1"] - models[reference][split]["f1"], 4)
                for split, m in models[label].items() if split in models.get(reference, {})}}


SHIFTED_RATES = (0.08, 0.12, 0.25, 0.35, 0.45)
"""Signal rates of the windows simulated from the validation window (its own: 18%)."""


def _shift_rows(labels, p, threshold: float, fitted_rate: float) -> tuple[dict, dict]:
    """(metrics as served, metrics with the window's rate estimated by EM and applied)."""
    from classify.calibration import estimate_prior, prior_shift
    from train.evaluate import binary_metrics

    rate = estimate_prior(p, fitted_rate)
    shifted = [prior_shift(v, fitted_rate, rate) for v in p]
    plain = {**binary_metrics(labels, p, threshold), "signal_rate": None}
    return plain, {**binary_metrics(labels, shifted, threshold),
                   "estimated_signal_rate": round(rate, 4),
                   "true_signal_rate": round(sum(labels) / len(labels), 4)}


def simulate_label_shift(labels, p, threshold: float, fitted_rate: float,
                         rates=SHIFTED_RATES, n: int = 400, draws: int = 30,
                         seed: int = 0) -> dict[str, Any]:
    """Windows of ``n`` validation articles at each of ``rates`` (drawn without
    replacement, the signals and the others separately), mean F1 over ``draws`` as
    served and with label shift; ``mean_gain`` averages over the rates."""
    import numpy as np

    from classify.calibration import estimate_prior, prior_shift

    rng = np.random.default_rng(seed)
    y, q = np.asarray(labels), np.asarray(p, dtype=float)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out: dict[str, Any] = {}

    def f1(yy, called):
        tp = int(((called == 1) & (yy == 1)).sum())
        return 2 * tp / max(int(called.sum()) + int(yy.sum()), 1)

    for rate in rates:
        k = int(round(rate * n))
        if k > len(pos) or n - k > len(neg):
            continue
        plain, shifted, estimates = [], [], []
        for _ in range(draws):
            idx = np.concatenate([rng.choice(pos, k, replace=False),
                                  rng.choice(neg, n - k, replace=False)])
            yy, qq = y[idx], q[idx]
            estimate = estimate_prior(qq.tolist(), fitted_rate)
            moved = np.asarray([prior_shift(v, fitted_rate, estimate) for v in qq])
            plain.append(f1(yy, (qq >= threshold).astype(int)))
            shifted.append(f1(yy, (moved >= threshold).astype(int)))
            estimates.append(estimate)
        out[f"{rate:g}"] = {"f1": round(float(np.mean(plain)), 4),
                            "f1_label_shift": round(float(np.mean(shifted)), 4),
                            "estimated_rate_mean": round(float(np.mean(estimates)), 4)}
    gains = [v["f1_label_shift"] - v["f1"] for v in out.values()]
    return {"windows": out, "n": n, "draws": draws,
            "mean_gain": round(float(np.mean(gains)), 4) if gains else None}


def scored_models(scores: list[dict], reference, validation) -> tuple[dict, dict, dict]:
    """``(rows, validation_f1, simulations)`` of the scored versions and the tuned
    reference: per model and window, as served and with label shift."""
    rows: dict[str, dict[str, dict]] = {}
    validation_f1: dict[str, float] = {}
    simulations: dict[str, dict] = {}
    parts: list[tuple[str, dict[str, tuple[list, list]], float, float]] = []
    for score in scores:
        def windows(key: str, score=score):
            return {split: ([a["signal"] for a in arts], [a[key] for a in arts])
                    for split, arts in score["windows"].items()}
        if score["ensemble"]:
            parts.append((f"{score['label']}-ensemble", windows("p_signal"),
                          score["threshold"], score["fitted_rate"]))
        parts.append((f"{score['label']}-adapter", windows("p_adapter"),
                      score["adapter_threshold"], score["adapter_fitted_rate"]))
    ref_windows = {split: ([a.signal for a in arts], reference.model.p_signal(arts))
                   for split, arts in validation.items()}
    parts.append((reference.name, ref_windows, reference.threshold,
                  reference.model.calibration.fitted_on.base_rate))
    for label, windows, threshold, fitted in parts:
        for split, (labels, p) in windows.items():
            plain, shifted = _shift_rows(labels, p, threshold, fitted)
            if split == "validation":
                validation_f1[label] = plain["f1"]
                simulations[label] = simulate_label_shift(labels, p, threshold, fitted)
                continue
            rows.setdefault(label, {})[split] = _row(plain) | {"signal_rate": None}
            rows.setdefault(f"{label}+label-shift", {})[split] = _row(shifted) | {
                k: shifted[k] for k in ("estimated_signal_rate", "true_signal_rate")}
    return rows, validation_f1, simulations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evaluations", nargs="*", metavar="[LABEL=]EVALUATION.json",
                        help="signals eval outputs (LABEL=: name the file's adapter)")
    parser.add_argument("--report", type=Path, nargs="*", default=[],
                        help="experiment report.json or progress.json files")
    parser.add_argument("--smooth", type=int, help="moving-average window of the loss "
                        "race (default: the first report's)")
    parser.add_argument("--plot", type=Path, help="draw every LoRA and LoRA+ loss curve here")
    parser.add_argument("--dataset", type=Path, default=Paths().datasets_dir / "reuters-acq")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--scores", type=Path, nargs="*", default=[],
                        help="bench/score_windows.py outputs (per-article scores)")
    parser.add_argument("--validation-days", type=int, default=VALIDATION_DAYS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    args = parser.parse_args()

    reports = [json.loads(p.read_text()) for p in args.report]
    adapters, models = collect(reports, [read_evaluation(a) for a in args.evaluations])
    models = {label: {s: _row(m) for s, m in windows.items()}
              for label, windows in models.items() if not label.startswith("tfidf")}
    scores = [json.loads(p.read_text()) for p in args.scores]
    splits = sorted({s for windows in models.values() for s in windows}
                    | {s for score in scores for s in score["windows"] if s != "validation"})
    if not splits:
        raise SystemExit("no evaluations given")
    train = load_split(args.dataset, args.train_split)
    test = {s: load_split(args.dataset, s) for s in splits}
    for baseline in (TfidfBaseline(train), TfidfBaseline(train, args.validation_days)):
        models[baseline.name] = {s: _row(baseline.evaluate(arts, s).metrics)
                                 for s, arts in test.items()}
    reference = TunedLexical(train, args.validation_days, dataset=args.dataset.name)
    _, window, _, _ = split_off_validation(train, args.validation_days)
    scored, validation_f1, simulations = scored_models(
        scores, reference, {"validation": labelled_sample(window), **test})
    models.update(scored)
    chosen, label_shift_default = None, False
    if validation_f1:
        label = max(validation_f1, key=validation_f1.get)
        # on by default only where it raised the served model's F1 on the simulated windows
        label_shift_default = (simulations[label]["mean_gain"] or 0) > 0
        served = f"{label}+label-shift" if label_shift_default else label
        versus = (f"{reference.name}+label-shift" if label_shift_default else reference.name)
        chosen = {"label": served, "validation_f1": validation_f1,
                  "label_shift": label_shift_default, "reference": versus,
                  "f1_minus_reference": {s: round(models[served][s]["f1"]
                                                  - models[versus][s]["f1"], 4)
                                         for s in test if s in models[served]},
                  "ece": {s: models[served][s]["ece"] for s in test if s in models[served]},
                  "versions": {sc["label"]: sc["version"] for sc in scores}}
    smooth = args.smooth or (reports[0]["config"].get("smooth", 5) if reports else 5)
    lora_vs_loraplus = race(adapters, models, smooth)
    table = {"dataset": args.dataset.name, "windows": {s: len(a) for s, a in test.items()},
             "adapters": {label: row["name"] for label, row in adapters.items()},
             "models": models, "over_seeds": over_seeds(models),
             "lexical_reference": reference.selection.report(),
             "label_shift_on_validation": {"simulated": simulations,
                                           "default": label_shift_default},
             "chosen_on_validation": chosen,
             "chosen_among_adapters": chosen_on_validation(adapters, models,
                                                           reference.name, args.train_split),
             "lora_vs_loraplus": lora_vs_loraplus}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    if args.plot and lora_vs_loraplus:
        from train.plots import plot_loss_curves

        curves = {label: adapters[label]["loss_curve"] for method in SFT
                  for label in seeds_of(method, adapters).values()}
        plot_loss_curves(curves, args.plot, lora_vs_loraplus["target_loss"], smooth)

    print(f"{'model':24} " + " ".join(f"{s + ' F1':>11} {'ECE':>6}" for s in splits))
    for label, windows in models.items():
        print(f"{label:24} " + " ".join(
            f"{windows[s]['f1']:>11.3f} {windows[s]['ece']:>6.3f}" if s in windows else
            f"{'-':>11} {'-':>6}" for s in splits))
    for method, row in table["over_seeds"].items():
        print(f"{method} over seeds {row['seeds']}: " + ", ".join(
            f"{s} F1 {row[s]['f1']['mean']} ({row[s]['f1']['min']}..{row[s]['f1']['max']})"
            for s in splits if s in row))
    print(f"lexical reference: {reference.model.params.label} (validation F1 "
          f"{table['lexical_reference']['validation_f1']})")
    for label, sim in simulations.items():
        print(f"label shift on simulated validation windows, {label}: mean F1 gain "
              f"{sim['mean_gain']} " + ", ".join(
                  f"{r}: {w['f1']} -> {w['f1_label_shift']}" for r, w in sim["windows"].items()))
    if chosen:
        print(f"chosen on validation: {chosen['label']} ({chosen['validation_f1']}); "
              f"minus {chosen['reference']}: {chosen['f1_minus_reference']}; "
              f"ECE {chosen['ece']}")
    if table["chosen_among_adapters"]:
        among = table["chosen_among_adapters"]
        print(f"best adapter on validation: {among['label']}; minus {among['reference']}: "
              f"{among['f1_minus_reference']}")
    if lora_vs_loraplus:
        print(f"steps to loss {lora_vs_loraplus['target_loss']}: " + ", ".join(
            f"{m} {r['steps_to_target']['values']}"
            for m, r in lora_vs_loraplus["per_method"].items())
              + f"; speed-up {lora_vs_loraplus['speedup']}x")


if __name__ == "__main__":
    main()
