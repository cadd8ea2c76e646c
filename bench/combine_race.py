"""LoRA vs LoRA+ over the seeds of several experiment runs, with one common target loss.

``bench/gpu_experiment.sh`` runs the full experiment (seed 0, every method) and, if time
allows, a second one with only LoRA and LoRA+ on seeds 1 and 2. Each report races its own
runs; this puts every seed's runs into one race (``train.experiment.lora_race``: the target
is the highest final smoothed loss of any run, so every run reaches it) and averages F1:

    python bench/combine_race.py REPORT.json [REPORT.json ...] [--out race.json]

A report is an experiment's ``report.json`` or, for a run that was cut off,
its ``progress.json`` (adapters trained so far, evaluations so far).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from train.experiment import ExperimentConfig, lora_race


def _adapter(row: dict) -> SimpleNamespace:
    return SimpleNamespace(manifest=SimpleNamespace(
        metrics=SimpleNamespace(loss_curve=row["loss_curve"])))


def combine(reports: list[dict], smooth: int) -> dict:
    """One race over every (lora, loraplus) pair of every report, labelled by seed."""
    adapters: dict[str, SimpleNamespace] = {}
    evaluations: dict[str, dict[str, dict]] = {}
    seeds: list[int] = []
    for report in reports:
        config = report.get("config", {})
        run_seeds = [config.get("seed", 0), *config.get("race_seeds", [])]
        for seed, suffix in zip(run_seeds, ["", *[f"-s{s}" for s in run_seeds[1:]]]):
            pair = [report["adapters"].get(m + suffix) for m in ("lora", "loraplus")]
            if not all(pair) or seed in seeds:
                continue  # a pair the run did not finish, or a seed already counted
            seeds.append(seed)
            for method, row in zip(("lora", "loraplus"), pair):
                label = method if len(seeds) == 1 else f"{method}-s{seed}"
                adapters[label] = _adapter(row)
                for split, results in report.get("evaluations", {}).items():
                    if method + suffix in results:
                        evaluations.setdefault(split, {})[label] = results[method + suffix]
    if not seeds:
        raise SystemExit("no report holds a finished LoRA and LoRA+ pair")
    config = ExperimentConfig(seed=seeds[0], race_seeds=seeds[1:], smooth=smooth)
    return lora_race(config, adapters, evaluations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report.json or progress.json")
    parser.add_argument("--smooth", type=int, help="moving-average window (default: the "
                        "first report's)")
    parser.add_argument("--out", type=Path, help="write the combined race as JSON here")
    args = parser.parse_args()
    reports = [json.loads(p.read_text()) for p in args.reports]
    smooth = args.smooth or reports[0].get("config", {}).get("smooth", 5)
    race = combine(reports, smooth)
    text = json.dumps(race, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
